"""Attention-head interventions (paper Section 3.2).

Usage::

    with ablate_heads(model, [(17, 22)]):          # zero head 22 of layer 17
        acc = accuracy(model, tok, cases)

The batched sweep of every head is in ``sweep`` (``head_sweep``).

The paper "intervenes the head by setting its parameters to zero". A head's only private
parameters after the attention pattern are its head_dim-wide slice of the o_proj INPUT (the
columns of o_proj's weight it multiplies), so we zero that slice with a forward pre-hook. This is
identical to zeroing those o_proj weight columns (the authors' code; ``zeroed_in_weights`` does
that, and the tests show the two agree). With grouped-query attention (GQA) query head h reads
key/value head h // (n_heads / n_kv_heads); the KV head is shared, so ablating query head h still
zeroes only h's own o_proj input slice. Zeroing slices of the o_proj OUTPUT would be wrong: those
d_model slices are not heads.

``method="mean"`` replaces the slice with its mean over a reference set instead of zero
(``head_means``): the paper leaves open whether zero ablation exaggerates effects.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from .data import align
from .forward import answer_logits, encode, length_batches, model_device
from .hooks import attached, capture_input, pre
from .families import o_proj, spec, weight_out_in
from .models import parse_pair

__all__ = ["ablate_heads", "head_means", "zeroed_in_weights", "parse_heads", "head_name"]


def head_name(layer: int, head: int) -> str:
    """The paper's "layer_head" name, e.g. (17, 22) -> "17_22"."""
    return f"{layer}_{head}"


def parse_heads(model, heads) -> list[tuple[int, int]]:
    """Normalise ``[(17, 22), "15_9", ...]`` to (layer, head) tuples and check their range."""
    s = spec(model)
    if isinstance(heads, str) or (isinstance(heads, tuple) and len(heads) == 2 and isinstance(heads[0], int)):
        heads = [heads]                                   # one head: "17_22" or (17, 22)
    out = []
    for h in heads:
        l, k = parse_pair(h, "head", "layer_head", "17_22")
        if not (0 <= l < s.n_layers and 0 <= k < s.n_heads):
            raise IndexError(f"head ({l}, {k}) is out of range: this model has layers 0..{s.n_layers - 1} "
                             f"and heads 0..{s.n_heads - 1} per layer")
        out.append((l, k))
    return out


def _mask_hook(n_heads: int, head_dim: int, mask: torch.Tensor, means: torch.Tensor | None):
    """Pre-hook for o_proj. mask: [R, H] (1 keep, 0 ablate), one row per batch row (R=1 broadcasts);
    means: [H, head_dim] or None (zero ablation)."""
    def hook(module, args):
        x = args[0]                                                    # [R, T, H*dh]
        shape = x.shape
        xh = x.view(*shape[:-1], n_heads, head_dim)                    # [R, T, H, dh]
        m = mask.to(device=x.device, dtype=x.dtype).view(mask.shape[0], *([1] * (xh.dim() - 3)), n_heads, 1)
        y = xh * m
        if means is not None:
            y = y + (1 - m) * means.to(device=x.device, dtype=x.dtype)
        return (y.reshape(shape),) + tuple(args[1:])
    return hook


@contextmanager
def ablate_heads(model, heads, method: str = "zero", means: torch.Tensor | None = None):
    """Ablate the given heads while inside the block; hooks are removed on exit, even on errors.

    heads: ``[(layer, head), ...]`` or ``["17_22", ...]``. method: "zero" or "mean" (needs ``means``
    from ``head_means``: [n_layers, n_heads, head_dim])."""
    if method not in ("zero", "mean"):
        raise ValueError(f"unknown ablation method {method!r}: use 'zero' or 'mean'")
    if method == "mean" and means is None:
        raise ValueError("method='mean' needs means=head_means(model, tokenizer, reference_cases)")
    s = spec(model)
    by_layer: dict[int, list[int]] = {}
    for l, h in parse_heads(model, heads):
        by_layer.setdefault(l, []).append(h)
    hooks = []
    for l, hs in by_layer.items():
        mask = torch.ones(1, s.n_heads, device=model_device(model))
        mask[0, hs] = 0
        mu = means[l].to(mask.device) if method == "mean" else None
        hooks.append(pre(o_proj(model, l), _mask_hook(s.n_heads, s.head_dim, mask, mu)))
    with attached(hooks):
        yield model


@contextmanager
def zeroed_in_weights(model, heads):
    """The authors' intervention: zero each head's o_proj weight COLUMNS in place (restored on exit)."""
    s = spec(model)
    saved = []
    try:
        with torch.no_grad():
            for l, h in parse_heads(model, heads):
                w = weight_out_in(o_proj(model, l))                      # [d_model, H*dh] view
                cols = slice(h * s.head_dim, (h + 1) * s.head_dim)
                saved.append((w, cols, w[:, cols].clone()))
                w[:, cols] = 0
        yield model
    finally:
        with torch.no_grad():
            for w, cols, old in reversed(saved):
                w[:, cols] = old


@torch.no_grad()
def head_means(model, tokenizer, cases, batch_size: int = 64) -> torch.Tensor:
    """Mean of every head's o_proj-input slice over all real token positions of ``cases`` (the
    prompt and the teacher-forced answer tokens, as the model reads them):
    [n_layers, n_heads, head_dim]. The reference for ``method="mean"``."""
    s = spec(model)
    cases = align(cases, tokenizer)
    total = torch.zeros(s.n_layers, s.n_heads * s.head_dim, dtype=torch.float64)
    count = 0
    for idx in length_batches(cases, batch_size):
        batch = encode(tokenizer, [cases[i] for i in idx], model_device(model))
        m = batch.attention_mask.unsqueeze(-1).to(torch.float64)
        store = {}
        with attached(capture_input({l: o_proj(model, l) for l in range(s.n_layers)}, store,
                                    lambda x: (x.to(torch.float64) * m).sum((0, 1)).cpu())):
            answer_logits(model, batch)
        for l, v in store.items():
            total[l] += v
        count += int(batch.attention_mask.sum())
    return (total / count).view(s.n_layers, s.n_heads, s.head_dim).float()
