"""FFN neurons: exact importance scores, Comparative Neuron Analysis (CNA), neuron interventions.

Usage::

    tr_ori = trace(model, tok, cases)                       # last position, every layer
    with ablate_heads(model, ["23_3"]):
        tr_inv = trace(model, tok, cases)
    imp_ori, imp_inv = importance_scores(model, [tr_ori, tr_inv], targets)   # [B, L, N] each
    top = top_neurons(cna(imp_ori, imp_inv), k=10, layers=tr_ori.layers,
                      imp_ori=imp_ori, imp_inv=imp_inv, coef_ori=tr_ori.coef, coef_inv=tr_inv.coef)
    with mask_neurons(model, ["28_3696", (25, 7164)]):     # zero two neurons (every position)
        ...

The importance scores themselves are computed in ``importance`` (re-exported here).
"""
from __future__ import annotations

from contextlib import contextmanager

import pandas as pd
import torch

from .forward import encode, model_device
from .hooks import attached, capture_input, pre
from .families import down_proj, spec
from .importance import importance_scores, projection
from .models import parse_pair

__all__ = ["importance_scores", "projection", "cna", "top_neurons", "parse_neurons", "neuron_name",
           "mask_neurons", "run_masked", "neuron_effects", "coef_decrease", "single_token"]


def neuron_name(layer: int, k: int) -> str:
    """The paper's name of neuron k in FFN layer l, e.g. (28, 3696) -> "28_3696"."""
    return f"{layer}_{k}"


def parse_neurons(model, neurons) -> list[tuple[int, int]]:
    """Normalise ``["28_3696", (25, 7164), ...]`` to (layer, index) pairs and check their range."""
    s = spec(model)
    out = []
    for n in neurons:
        l, k = parse_pair(n, "neuron", "layer_index", "28_3696")
        if not 0 <= l < s.n_layers:
            raise IndexError(f"neuron {neuron_name(l, k)}: layer {l} is out of range 0..{s.n_layers - 1}")
        if not 0 <= k < s.d_mlp:
            raise IndexError(f"neuron {neuron_name(l, k)}: index {k} is out of range 0..{s.d_mlp - 1} "
                             f"(this model has {s.d_mlp} FFN neurons per layer)")
        out.append((l, k))
    return out


def single_token(tokenizer, target) -> int:
    """A target given as an id or as text that is exactly one token -> its id (clear error otherwise)."""
    if isinstance(target, int):
        return target
    ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise ValueError(f"target {target!r} is {len(ids)} tokens {pieces}, not one: importance scores need a "
                         "single next token. Pass the id of the first answer token (Case.answer_ids[0]).")
    return ids[0]


def cna(scores_a: torch.Tensor, scores_b: torch.Tensor) -> torch.Tensor:
    """Comparative Neuron Analysis: ``scores_a - scores_b`` for the same neurons, inputs and targets
    (model A vs model B, or input A vs input B in one model). Sort it descending to find the neurons
    that explain why A predicts the target and B does not (``top_neurons``)."""
    if scores_a.shape != scores_b.shape:
        raise ValueError(f"score tensors differ in shape: {tuple(scores_a.shape)} vs {tuple(scores_b.shape)}")
    return scores_a - scores_b


def top_neurons(score: torch.Tensor, k: int, layers=None, **columns) -> pd.DataFrame:
    """The k highest-scoring neurons of every case.

    ``score``: [cases, L, N] (or [L, N] for one case); ``layers``: the model layer of each L slot
    (default 0..L-1); ``columns``: more tensors of the same shape to report beside the score (e.g.
    ``imp_ori=..., coef_ori=...``). Returns one row per (case, rank) with ``layer``, ``neuron``,
    ``name`` ("l_k"), ``score`` and the extra columns."""
    if k is None or int(k) < 1:
        raise ValueError(f"k must be a positive number of neurons, got {k!r}")
    one = score.dim() == 2
    sc = score.unsqueeze(0) if one else score
    if sc.dim() != 3:
        raise ValueError(f"score must be [cases, layers, neurons] or [layers, neurons], got {tuple(score.shape)}")
    B, L, N = sc.shape
    k = min(int(k), L * N)
    layers = list(range(L)) if layers is None else list(layers)
    if len(layers) != L:
        raise ValueError(f"{len(layers)} layer labels for {L} layer slots")
    cols = {}
    for name, t in columns.items():
        t = t.unsqueeze(0) if one else t
        if t.shape != sc.shape:
            raise ValueError(f"column {name!r} has shape {tuple(t.shape)}, expected {tuple(sc.shape)}")
        cols[name] = t.reshape(B, -1)
    vals, idx = sc.reshape(B, -1).topk(k, dim=-1)
    rows = []
    for b in range(B):
        for r in range(k):
            flat = int(idx[b, r])
            li, n = divmod(flat, N)
            row = dict(case=b, rank=r + 1, layer=layers[li], neuron=n, name=neuron_name(layers[li], n),
                       score=float(vals[b, r]))
            row.update({c: float(t[b, flat]) for c, t in cols.items()})
            rows.append(row)
    return pd.DataFrame(rows)


def _layer_masks(model, neurons, mode: str, layers, per_row: bool):
    """{layer: multiplier [N] or [rows, N]} for zero / keep interventions."""
    s = spec(model)
    if mode not in ("zero", "keep"):
        raise ValueError(f"mode must be 'zero' or 'keep', got {mode!r}")
    sets = neurons if per_row else [neurons]
    sets = [parse_neurons(model, ns) for ns in sets]
    if mode == "keep":
        if layers is None:
            raise ValueError("mode='keep' zeroes every other neuron of the given layers: pass layers=[...]")
        todo = sorted(set(layers))
        for l in todo:
            if not 0 <= l < s.n_layers:
                raise IndexError(f"layer {l} is out of range 0..{s.n_layers - 1}")
    else:
        todo = sorted({l for ns in sets for l, _ in ns})
    masks = {}
    for l in todo:
        m = torch.full((len(sets), s.d_mlp), 0.0 if mode == "keep" else 1.0)
        for r, ns in enumerate(sets):
            idx = [k for ll, k in ns if ll == l]
            if idx:
                m[r, idx] = 1.0 if mode == "keep" else 0.0
        masks[l] = m if per_row else m[0]
    return masks


@contextmanager
def mask_neurons(model, neurons, mode: str = "zero", layers=None, per_row: bool = False):
    """Intervene FFN neurons at every position: ``mode="zero"`` sets the listed neurons' coefficient
    scores to 0 (the same as zeroing their down_proj columns, which the tests show);
    ``mode="keep"`` zeroes every OTHER neuron of ``layers`` (the paper's "keep" experiment).

    ``neurons``: ["l_k", (l, k), ...]. With ``per_row=True`` it is a list of such lists, one per
    batch row, and every forward inside the block must have exactly that many rows."""
    masks = _layer_masks(model, neurons, mode, layers, per_row)

    def make(mask):
        def hook(module, args):
            x = args[0]
            m = mask.to(device=x.device, dtype=x.dtype)
            if m.dim() == 2:
                if x.shape[0] != m.shape[0]:
                    raise ValueError(f"per-row neuron masks for {m.shape[0]} rows, but the batch has {x.shape[0]}")
                m = m.view(m.shape[0], *([1] * (x.dim() - 2)), m.shape[1])
            return (x * m,) + tuple(args[1:])
        return hook

    with attached([pre(down_proj(model, l), make(m)) for l, m in masks.items()]):
        yield


@torch.no_grad()
def run_masked(model, tokenizer, prompt_ids, target: int, neuron_sets, mode: str = "zero", layers=None,
               coef_layers=None) -> dict:
    """One prompt, several interventions in ONE forward: row r applies ``neuron_sets[r]``.

    Returns ``logprob`` [R] (log p(target) at the last position), ``correct`` [R] (target is the
    argmax) and, with ``coef_layers``, ``coef`` [R, len(coef_layers), d_mlp] (coefficient scores at
    the last position, after the intervention)."""
    if len(neuron_sets) == 0:
        raise ValueError("no neuron sets given")
    R = len(neuron_sets)
    batch = encode(tokenizer, [list(prompt_ids)] * R, model_device(model))
    cap = {}
    # the capture hooks are attached after the mask hooks, so they see the masked coefficient scores
    with mask_neurons(model, neuron_sets, mode=mode, layers=layers, per_row=True), \
            attached(capture_input({l: down_proj(model, l) for l in (coef_layers or [])}, cap,
                                   lambda x: x[:, -1].float().cpu())):
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       position_ids=batch.position_ids, use_cache=False).logits[:, -1].float()
    lp = torch.log_softmax(logits, -1)
    out = dict(logprob=lp[:, target].cpu(), correct=(logits.argmax(-1) == target).cpu())
    if coef_layers:
        out["coef"] = torch.stack([cap[l] for l in coef_layers], dim=1)
    return out


def neuron_effects(model, tokenizer, prompt_ids, target: int, neurons, batch_rows: int = 64) -> pd.DataFrame:
    """Causal effect of zeroing each neuron ALONE: the drop in log p(target) at the last position
    (one batched forward per ``batch_rows`` neurons, plus one unmasked row)."""
    neurons = parse_neurons(model, neurons)
    base = float(run_masked(model, tokenizer, prompt_ids, target, [[]])["logprob"][0])
    drops = []
    for i in range(0, len(neurons), batch_rows):
        part = neurons[i:i + batch_rows]
        lp = run_masked(model, tokenizer, prompt_ids, target, [[n] for n in part])["logprob"]
        drops += (base - lp).tolist()
    return pd.DataFrame(dict(layer=[l for l, _ in neurons], neuron=[k for _, k in neurons],
                             name=[neuron_name(*n) for n in neurons], logprob_drop=drops))


def coef_decrease(before: torch.Tensor, after: torch.Tensor) -> float:
    """Relative decrease (%) of coefficient scores, measured in the direction each neuron was
    pushing: ``100 * sum(sign(m) * (m - m')) / sum(|m|)``. Coefficient scores of gated FFNs can be
    negative, so a plain ratio of sums would let signs cancel; for positive scores this is the
    plain relative decrease of their sum."""
    before, after = before.float(), after.float()
    denom = before.abs().sum()
    if denom == 0:
        return float("nan")
    return float(100 * (torch.sign(before) * (before - after)).sum() / denom)
