"""Accuracy of a model on aligned cases, per case and aggregated.

Usage::

    per_case = accuracy(model, tok, cases)          # one row per case
    summarize(per_case, by=("op",))                 # accuracy per op, plus an "all" row

Metrics (fractions in [0, 1]; bigger = better):

* ``accuracy``: the argmax next token after the prompt is the answer's first token (the paper's
  metric for its head tables).
* ``answer_accuracy``: every answer token is the argmax when the model reads the prompt and the
  previous answer tokens (teacher-forced digit by digit).
* ``gold_logprob``: mean log-probability of the answer's first token.
"""
from __future__ import annotations

import pandas as pd
import torch

from cna_utils.data.arithmetic import align
from cna_utils.model.forward import answer_logits, encode, length_batches, model_device, score

__all__ = ["accuracy", "summarize", "token_table", "relative_decrease"]

_METRICS = {"first_correct": "accuracy", "answer_correct": "answer_accuracy", "gold_logprob": "gold_logprob"}


@torch.no_grad()
def accuracy(model, tokenizer, cases, batch_size: int = 64) -> pd.DataFrame:
    """Score every case in batches. Returns a DataFrame, one row per case (in the given order):
    the case's fields, ``first_correct``, ``answer_correct``, ``gold_logprob``, ``pred`` (the
    predicted first token as text), ``token_correct`` (tuple, per answer token) and ``kinds``."""
    if len(cases) == 0:
        raise ValueError("no cases given: pass a non-empty list of cases (see arithmetic_dataset)")
    cases = align(cases, tokenizer)
    rows: list = [None] * len(cases)
    for idx in length_batches(cases, batch_size):
        batch = encode(tokenizer, [cases[i] for i in idx], model_device(model))
        sc = score(answer_logits(model, batch), batch.targets)
        S = batch.targets.shape[1]
        for r, i in enumerate(idx):
            n = len(cases[i].answer_ids)
            rows[i] = dict(cases[i].to_row(), first_correct=bool(sc["first_correct"][r]),
                           answer_correct=bool(sc["answer_correct"][r]), gold_logprob=float(sc["gold_logprob"][r]),
                           pred=tokenizer.decode([int(sc["pred"][r])]),
                           token_correct=tuple(bool(x) for x in sc["token_correct"][r, S - n:]),
                           kinds=cases[i].kinds)
    return pd.DataFrame(rows)


def summarize(frame: pd.DataFrame, by=("op",), keys=(), extra=()) -> pd.DataFrame:
    """Aggregate a per-case frame: mean of each metric per group of ``keys + by``, plus rows where
    every ``by`` column is "all". Columns: keys, by, n, accuracy, answer_accuracy, gold_logprob
    (and ``base_*`` and ``drop`` = base_accuracy - accuracy when the frame has baseline columns),
    and the mean of each column named in ``extra`` under its own name."""
    by, keys = list((by,) if isinstance(by, str) else by), list(keys)
    cols = {c: n for c, n in _METRICS.items() if c in frame}
    cols.update({"base_" + c: "base_" + n for c, n in _METRICS.items() if "base_" + c in frame})
    cols.update({c: c for c in extra})
    f = frame[keys + by + list(cols)].copy()
    for c in cols:
        f[c] = f[c].astype(float)
    parts = []
    for grouping in ([by] if by else []) + [[]]:
        g = f.copy()
        for c in by:
            if c not in grouping:
                g[c] = "all"
        gk = keys + by
        agg = g.groupby(gk, sort=False, dropna=False) if gk else None
        if agg is None:
            res = g[list(cols)].mean().to_frame().T
            res.insert(0, "n", len(g))
        else:
            res = agg[list(cols)].mean()
            res.insert(0, "n", agg.size())
            res = res.reset_index()
        parts.append(res)
    out = pd.concat(parts, ignore_index=True).rename(columns=cols)
    if "base_accuracy" in out:
        out["drop"] = out["base_accuracy"] - out["accuracy"]
    for c in by:
        out[c] = out[c].astype(str)
    return out


def token_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per answer token of a per-case ``accuracy`` frame: op, digits, group, position,
    kind ("memorize"/"change-one"/"sign"/""), correct (teacher-forced)."""
    rows = []
    for r in frame.itertuples(index=False):
        for pos, (ok, kind) in enumerate(zip(r.token_correct, r.kinds)):
            rows.append(dict(op=r.op, digits=r.digits, group=r.group, template=r.template, form=r.form,
                             position=pos, kind=kind, correct=bool(ok)))
    return pd.DataFrame(rows)


def relative_decrease(base, value):
    """The paper's "decrease (%)": 100 x (base - value) / base (NaN where base is 0). Works on
    numbers, numpy arrays and pandas Series. Bigger = the intervention hurts more."""
    import numpy as np
    if isinstance(base, pd.Series) or isinstance(value, pd.Series):
        base = base if isinstance(base, pd.Series) else pd.Series(base, index=value.index)
        return (100.0 * (base - value) / base).where(base != 0)
    b, v = np.asarray(base, dtype=float), np.asarray(value, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(b != 0, 100.0 * (b - v) / b, np.nan)
    return float(out) if out.ndim == 0 else out
