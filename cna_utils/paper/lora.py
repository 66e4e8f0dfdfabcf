"""What a LoRA model changes, neuron by neuron (paper Section 5: Tables 9-10 and the LoRA CNA).

Usage::

    coefs, increase = lora_coefficients(model, tok, cases, res, {9: run})   # Tables 9-10
    c = lora_cna(model, tok, cases, run)          # CNA, LoRA vs original: c.score = c.imp_lora - c.imp_ori
    layer, lr, why = chapter5_layer(results_dir, n_layers, default_lr=0.001)  # chapter 5's choice
    cases = pruning_cases(model, tok, cases_per_op=25, seed=0)                 # Table 11's CNA cases
    t11 = table_11(tok, test, base, layer, runs, pruned)                       # Table 11
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from cna_utils.measure.compare import Comparison, Scoring, compare
from cna_utils.measure.evaluate import accuracy
from cna_utils.paper.depth import depth_map, scale_layer
from cna_utils.measure.neurons import coef_decrease
from cna_utils.measure.tracing import trace
from cna_utils.paper.study import one_digit_cases
from cna_utils.store.schema import field

__all__ = ["lora_coefficients", "lora_cna", "chapter5_layer", "chapter5_template", "best_shallow_layer",
           "pruning_cases", "table_11"]


def lora_coefficients(model, tokenizer, cases, res: Comparison, runs: dict, ks=(50, 30, 20, 10)):
    """Paper Tables 9-10: the coefficient scores of each case's top-k CNA neurons (``res``, the
    head comparison of chapter 2) in the original model and in each LoRA model of ``runs``
    ({layer: run or adapter dir}). Returns (coefs, increase): ``coefs`` [models, cases, kmax] with
    row 0 the original, and one row per (layer, k) of the mean coefficient increase (%) over the
    cases, the sign-aware ``-coef_decrease`` (positive = the LoRA model's coefficients are larger in
    the direction the neuron pushes)."""
    from cna_utils.measure.lora import lora_applied
    kmax = max(ks)
    tops = [res.top(kmax, case=i) for i in range(len(cases))]
    layers_needed = sorted({int(l) for t in tops for l in t.layer})

    def coefs():
        tr = trace(model, tokenizer, cases, layers=layers_needed, keep=("coef",))
        out = torch.zeros(len(cases), kmax)
        for i, t in enumerate(tops):
            li = [layers_needed.index(int(l)) for l in t.layer]
            out[i, :len(t)] = tr.coef[i, li, list(t.neuron)]
        return out

    table = [coefs()]
    for l, run in runs.items():
        with lora_applied(model, run):
            table.append(coefs())
    rows = []
    for j, l in enumerate(runs, start=1):
        for k in ks:
            inc = [-coef_decrease(table[0][i, :k], table[j][i, :k]) for i in range(len(cases))]
            rows.append(dict(layer=l, k=k, increase=float(torch.tensor(inc).nanmean())))
    return torch.stack(table), pd.DataFrame(rows)


def lora_cna(model, tokenizer, cases, adapter, layers=None, progress: bool = False, scale: str = "original",
             target: str = "prediction"):
    """CNA between a LoRA model and the original: a ``Comparison`` labelled ("lora", "ori"), so
    ``c.score`` is ``c.imp_lora - c.imp_ori`` (scores [cases, layers, neurons]) and ``c.traces`` is
    (LoRA, original), with ``resid_mid`` and ``coef`` of ``layers``.
    ``target="prediction"`` (default, as the authors' CNA code) scores each case's answer as the
    ORIGINAL model's top-1 token at the last position; ``target="gold"`` scores the first token of
    the gold answer (the two differ only where the original model is wrong). ``scale="original"``
    (default, as the authors' code and the head CNA) freezes both models' final norm at the ORIGINAL
    model's statistics; ``scale="own"`` freezes each model's at its own final residual. Below the
    LoRA layer both models compute the same thing, so at the original's scale the two scores are
    equal there (tested): pass ``layers`` from the LoRA layer up to skip that work."""
    if scale not in ("original", "own"):
        raise ValueError(f"scale must be 'original' (the authors' choice) or 'own', got {scale!r}")
    if target not in ("prediction", "gold"):
        raise ValueError(f"target must be 'prediction' (the original model's top-1, the authors' choice) or 'gold', "
                         f"got {target!r}")
    from cna_utils.measure.lora import lora_applied
    scoring = Scoring(target=target, layers=layers, norm="a" if scale == "original" else "own")
    c = compare(model, tokenizer, cases, condition=lambda: lora_applied(model, adapter), scoring=scoring,
                progress=progress, labels=("ori", "lora"))
    return replace(c, subject=str(adapter)).swapped()


def _chapter5_results(results_dir) -> dict | None:
    """Chapter 5's results file, or None when it has not been run here."""
    path = Path(results_dir) / "05_lora.json"
    return json.loads(path.read_text()) if path.exists() else None


def chapter5_layer(results_dir, n_layers: int, default_lr: float, given: int | None = None) -> tuple[int, float, str]:
    """The LoRA layer and learning rate chapter 6 builds on, with a sentence saying where they came
    from: ``given`` if not None; else chapter 5's best shallow layer (held-out accuracy) and its rate,
    read from its results file; else, when chapter 5 has not been run, the paper's 9th layer scaled
    to ``n_layers`` with ``default_lr``."""
    r5 = _chapter5_results(results_dir)
    if given is not None:
        layer = int(given)
    elif r5 is not None:
        layer = int(field(r5, "best_shallow_layer"))
    else:
        layer = scale_layer(9, n_layers)
    run = field(r5, "figure_2").get(str(layer)) if r5 is not None else None
    lr = float(run["lr"]) if run else float(default_lr)
    if given is not None:
        why = f"the LoRA layer was given: {layer}, lr {lr:g}"
    elif r5 is not None:
        why = f"chapter 5's best shallow LoRA layer (held-out accuracy) is {layer}, lr {lr:g}"
    else:
        why = f"chapter 5 has not been run here: the paper's 9th layer scaled to this model, {layer}, lr {lr:g}"
    return layer, lr, why


def chapter5_template(results_dir) -> int | None:
    """The template chapter 5 trained and tested its LoRA models on (``lora.template_choice``), read
    from its results file; None when chapter 5 has not been run (or ran before it recorded one)."""
    t = (_chapter5_results(results_dir) or {}).get("data", {}).get("template")   # older files have none
    return int(t) if t is not None else None


def best_shallow_layer(val_acc: dict, n_layers: int) -> tuple[int, str]:
    """The LoRA layer the later analyses build on, by a stated rule: the best held-out accuracy
    among the shallow layers (the paper's FFN layers 0-15, scaled; all layers if none was trained
    there), a tie going to the layer nearest the paper's choice, its 9th (scaled); the paper notes
    that layer 0 "may have special use". ``val_acc``: {layer: held-out accuracy}. Returns (layer, a
    sentence naming the rule and the layers that tied)."""
    shallow = set(depth_map(n_layers)["shallow_ffn"])
    pool = {l: a for l, a in val_acc.items() if l in shallow} or dict(val_acc)
    if not pool:
        raise ValueError("no LoRA runs given: train at least one layer (lora_per_layer)")
    top = max(pool.values())
    tied = sorted(l for l, a in pool.items() if a == top)
    target = scale_layer(9, n_layers)
    layer = min(tied, key=lambda l: (abs(l - target), l))
    why = (f"layer {layer}: the best held-out accuracy among the shallow LoRA layers ({100 * top:.1f}%)"
           + (f", tied by layers {', '.join(map(str, tied))}; the tie goes to the one nearest the paper's "
              f"9th layer (scaled: {target})" if len(tied) > 1 else ""))
    return layer, why


def pruning_cases(model, tokenizer, cases_per_op: int | None, seed: int) -> list:
    """The 1-digit cases whose LoRA CNA chooses the neurons Table 11 keeps: every case of the four
    operations, or ``cases_per_op`` of each drawn without replacement (seeded), in their order."""
    cases, _ = one_digit_cases(model, tokenizer, ops="+-*/")
    if cases_per_op is None:
        return cases
    g = torch.Generator().manual_seed(seed)
    by_op = {op: [c for c in cases if c.op == op] for op in "+-*/"}
    return [cs[i] for cs in by_op.values() for i in sorted(torch.randperm(len(cs), generator=g)[:cases_per_op].tolist())]


def table_11(tokenizer, test, base, layer: int, runs: dict, pruned: dict) -> pd.DataFrame:
    """Paper Table 11 (%, rows "acc" = whole answer and "first token"): the original model
    (``base``, its accuracy frame on ``test``), LoRA on ``layer`` (``runs["full"]``, a row of
    ``lora_per_layer``), LoRA on the CNA-pruned and the randomly pruned models (``runs["cna"]``,
    ``runs["random"]``, ``train_cached`` results) and the two pruned models without LoRA
    (``pruned["cna"]``, ``pruned["random"]``)."""
    def acc(m):
        a = accuracy(m, tokenizer, test)
        return [100 * float(a.answer_correct.mean()), 100 * float(a.first_correct.mean())]

    full = runs["full"]
    return pd.DataFrame({
        "origin": [100 * float(base.answer_correct.mean()), 100 * float(base.first_correct.mean())],
        f"LoRA{layer}": [100 * full.test_acc, 100 * full.test_first],
        f"LoRA{layer}-p": [100 * runs["cna"]["test"]["answer"], 100 * runs["cna"]["test"]["first"]],
        f"LoRA{layer}-r": [100 * runs["random"]["test"]["answer"], 100 * runs["random"]["test"]["first"]],
        "pruned, no LoRA": acc(pruned["cna"]),
        "random-pruned, no LoRA": acc(pruned["random"]),
    }, index=["acc", "first token"])
