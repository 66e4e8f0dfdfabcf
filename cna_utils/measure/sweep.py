"""The batched sweep: every attention head ablated one at a time, every case scored each time.

Usage::

    df = head_sweep(model, tok, cases)                  # one row per (layer, head, op) and "all"
    long = head_sweep_cases(model, tok, cases)          # one row per (layer, head, case)

Batched: one baseline forward per batch of cases caches the residual stream x^{l-1}; for layer
l, the batch is replicated once per head of that layer (each replica row has its own head mask
in the o_proj pre-hook) and the forward STARTS at layer l from the cached residual; the LM head
runs on the answer positions only. Up to ``rows_per_forward`` rows (cases x heads) go in one
forward; when one layer's heads x cases make fewer than ``min_rows`` rows (a single prompt),
consecutive layers share a forward that starts at the lowest of them. Results equal a loop of one
hooked full forward per head (tests check it). Each finished layer is saved under ``cache_dir``
with a fingerprint of the weights, cases, method and means: a rerun loads it (interrupt-safe).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from cna_utils.data.arithmetic import align
from cna_utils.measure.evaluate import summarize
from cna_utils.model.families import layers, o_proj, spec
from cna_utils.model.forward import answer_logits, encode, length_batches, model_device, Run, score
from cna_utils.measure.interventions import ablation, head_mask_hook, head_means
from cna_utils.measure.names import parse_heads
from cna_utils.model.hooks import attached, capture_input, pre
from cna_utils.store.cache import artefact_key, save_atomic

__all__ = ["head_sweep", "head_sweep_cases", "SWEEP_RUN"]

SCORES = ("first_correct", "answer_correct", "gold_logprob")
# The sweep's packing when a ``Run`` leaves it open.
SWEEP_RUN = dict(batch_size=32, rows_per_forward=512, min_rows=64)


def _fingerprint(model, cases, method, means) -> str:
    """Identifies a sweep's inputs (``cache.artefact_key``): the weights, the cases, the method and means."""
    return artefact_key(model, str(spec(model)), method, str(next(model.parameters()).dtype),
                        [[c.prompt_ids, c.answer_ids] for c in cases], means if means is not None else None, code=__name__)


def head_sweep(model, tokenizer, cases, heads=None, by=("op",), **options) -> pd.DataFrame:
    """Ablate every head (or ``heads``) one at a time and score ``cases`` each time; ``options`` are
    those of ``head_sweep_cases``.

    Returns a DataFrame with one row per (layer, head, *by) plus ``by`` = "all" rows: ``n``,
    ``accuracy`` (first answer token), ``answer_accuracy`` (all answer tokens, teacher-forced; only
    with ``answer="all"``), ``gold_logprob`` (mean log p of the first answer token), the same with
    ``base_`` for the unablated model, and ``drop`` = base_accuracy - accuracy (bigger = more
    important head)."""
    return summarize(head_sweep_cases(model, tokenizer, cases, heads, **options), by=by, keys=("layer", "head"))


@torch.no_grad()
def head_sweep_cases(model, tokenizer, cases, heads=None, method: str = "zero", means: torch.Tensor | None = None,
                     answer: str = "first", run: Run = Run()) -> pd.DataFrame:
    """The sweep's long frame: one row per (layer, head, case) with the case's fields and, per
    score in ``SCORES``, its value with the head ablated and (``base_``) without.

    ``method="mean"`` uses ``means`` or, if None, the head means over ``cases`` themselves.
    ``answer="first"`` (default) feeds only the prompt and scores the first answer token (the
    paper's accuracy; multi-token answers cost nothing extra); ``answer="all"`` also feeds the
    answer teacher-forced and adds ``answer_correct``. ``run``: where finished layers are saved (see
    the module docstring), the progress bar and how cases and heads are packed into forwards
    (defaults ``SWEEP_RUN``; the numbers do not depend on it)."""
    run = run.filled(**SWEEP_RUN)
    cache_dir, rows_per_forward = run.cache_dir, run.rows_per_forward
    cases, heads, means = sweep_inputs(model, tokenizer, cases, heads, method, means, answer)
    chunks = length_batches(cases, run.batch_size)
    kind = ablation(method)
    fp = _fingerprint(model, cases, kind.name, means) if cache_dir is not None else None
    results, kept, todo = _saved_layers(cache_dir, heads, fp)
    base, resid, batches = _baseline(model, tokenizer, cases, chunks, todo)
    widest = max(len(c) for c in chunks)
    bar = tqdm(total=len(todo) * len(chunks), desc="head sweep (layer x batch)", disable=not run.progress, mininterval=10)
    for group in _layer_groups(todo, widest, run.min_rows):
        ghead = [(l, h) for l in group for h in todo[l]]
        per_head = {lh: {k: torch.zeros_like(v) for k, v in base.items()} for lh in ghead}
        for idx, batch, store in zip(chunks, batches, resid):
            k = max(1, rows_per_forward // len(idx))
            for j in range(0, len(ghead), k):
                sc = _ablated_scores(model, batch, store, ghead[j:j + k], means, kind)
                for r, lh in enumerate(ghead[j:j + k]):
                    for key in per_head[lh]:
                        per_head[lh][key][idx] = sc[key][r * len(idx):(r + 1) * len(idx)]
            bar.update(len(group))
        results.update(per_head)
        if cache_dir is not None:
            _save_layers(Path(cache_dir), group, fp, kept, per_head)
    bar.close()
    return _long_frame(cases, heads, results, base, answer)


def sweep_inputs(model, tokenizer, cases, heads, method, means, answer):
    """The sweep's inputs checked and completed: (aligned cases, [(layer, head)], means or None)."""
    if len(cases) == 0:
        raise ValueError("no cases given: pass a non-empty list of cases (see arithmetic_dataset)")
    cases = align(cases, tokenizer)
    if answer not in ("first", "all"):
        raise ValueError(f"answer must be 'first' or 'all', got {answer!r}")
    if ablation(method).needs_reference and means is None:
        means = head_means(model, tokenizer, cases)       # over prompt + answer, whatever ``answer`` scores
    if answer == "first":
        cases = [replace(c, answer_ids=c.answer_ids[:1], kinds=c.kinds[:1]) for c in cases]
    s = spec(model)
    heads = [(l, h) for l in range(s.n_layers) for h in range(s.n_heads)] if heads is None else parse_heads(model, heads)
    if not heads:
        raise ValueError("heads is empty: pass None for every head or a list like [(17, 22)]")
    return cases, heads, means


def _saved_layers(cache_dir, heads, fp):
    """Saved results that match ``fp``: (results by head, saved heads by layer, heads still to run by layer)."""
    results: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
    kept: dict[int, dict] = {}
    todo: dict[int, list[int]] = {}
    cache = Path(cache_dir) if cache_dir is not None else None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    for l in sorted({l for l, _ in heads}):
        f = cache / f"layer_{l:03d}.pt" if cache is not None else None
        saved = torch.load(f) if f is not None and f.exists() else None
        kept[l] = saved["heads"] if saved is not None and saved.get("fingerprint") == fp else {}
        results.update({tuple(k): v for k, v in kept[l].items()})
        missing = [h for (ll, h) in heads if ll == l and (l, h) not in results]
        if missing:
            todo[l] = missing
    return results, kept, todo


def _baseline(model, tokenizer, cases, chunks, todo):
    """The unablated scores, and per batch the residual x^{l-1} of every layer still to sweep."""
    base = {k: torch.zeros(len(cases), dtype=torch.float32 if k == "gold_logprob" else torch.bool) for k in SCORES}
    resid, batches = [], []
    for idx in chunks:
        batch = encode(tokenizer, [cases[i] for i in idx], model_device(model))
        store: dict = {}
        with attached(capture_input({l: layers(model)[l] for l in todo if l > 0}, store)):
            sc = score(answer_logits(model, batch), batch.targets)
        for k in base:
            base[k][idx] = sc[k]
        resid.append(store)
        batches.append(batch)
    return base, resid, batches


def _layer_groups(todo, widest: int, min_rows: int) -> list[list[int]]:
    """Consecutive layers that share one forward. Small forwards cost mostly fixed overhead per
    layer call: while a group's heads x cases stay under ``min_rows`` rows, the next layer joins it
    (rows of a higher layer recompute the layers below it, cheap next to the saved overhead). Each
    layer is still a unit of the resumable cache."""
    groups: list[list[int]] = []
    for l in todo:
        if groups and groups[-1][-1] == l - 1 and sum(len(todo[x]) for x in groups[-1]) * widest < min_rows:
            groups[-1].append(l)
        else:
            groups.append([l])
    return groups


def _ablated_scores(model, batch, store, part, means, kind):
    """One forward of ``batch`` replicated once per head of ``part``, replica r with head ``part[r]``
    ablated (``kind``: zero, or ``means``, ...), started at the lowest layer of ``part`` from the cached residual."""
    s, dev, B = spec(model), model_device(model), len(batch)
    start = min(l for l, _ in part)
    hooks = []
    for l in sorted({l for l, _ in part}):
        mask = torch.ones(len(part) * B, s.n_heads, device=dev)
        for r, (ll, h) in enumerate(part):
            if ll == l:
                mask[r * B:(r + 1) * B, h] = 0
        hooks.append(pre(o_proj(model, l), head_mask_hook(s.n_heads, s.head_dim, mask,
                                                       means[l].to(dev) if kind.needs_reference else None, kind)))
    rb = batch.repeat(len(part))
    with attached(hooks):
        if start == 0:
            logits = answer_logits(model, rb)
        else:
            logits = answer_logits(model, rb, start_layer=start, resid=store[start].repeat(len(part), 1, 1))
    return score(logits, rb.targets)


def _save_layers(cache: Path, group, fp, kept, per_head) -> None:
    for l in group:
        save_atomic({"fingerprint": fp, "heads": {**kept[l], **{lh: v for lh, v in per_head.items() if lh[0] == l}}},
                    cache / f"layer_{l:03d}.pt")


def per_head_frame(cases, heads, columns) -> pd.DataFrame:
    """One row per (layer, head, case): the case's fields and ``columns(layer, head)`` ({name: [cases]})."""
    info = pd.DataFrame([c.to_row() for c in cases])
    frames = []
    for (l, h) in heads:
        f = info.copy()
        f.insert(0, "case", range(len(cases)))
        f.insert(0, "head", h)
        f.insert(0, "layer", l)
        for key, v in columns(l, h).items():
            f[key] = v
        frames.append(f)
    return pd.concat(frames, ignore_index=True)


def _long_frame(cases, heads, results, base, answer) -> pd.DataFrame:
    def columns(l, h):
        out = {}
        for key, v in results[(l, h)].items():
            out[key], out["base_" + key] = v.numpy(), base[key].numpy()
        return out
    long = per_head_frame(cases, heads, columns)
    if answer == "first":                      # identical to first_correct: do not report it twice
        long = long.drop(columns=["answer_correct", "base_answer_correct"])
    return long
