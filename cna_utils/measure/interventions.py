"""Interventions on heads and neurons, in one vocabulary.

Usage::

    with ablate_heads(model, [(17, 22)]):                   # zero head 22 of layer 17
        acc = accuracy(model, tok, cases)
    with ablate_heads(model, ["17_22"], method="mean", means=head_means(model, tok, reference)):
        ...
    with mask_neurons(model, ["28_3696", (25, 7164)]):     # zero two FFN neurons (every position)
        ...
    with mask_neurons(model, top99, mode="keep", layers=deep):   # zero every OTHER neuron of ``deep``
        ...

**What replaces an ablated head** is an ``Ablation`` kind, looked up by name in ``ABLATIONS``:
``"zero"`` (the paper's) and ``"mean"`` (the head's mean output over a reference set). The head
sweep (``sweep``) and ``ablate_heads`` apply the kind through ``head_mask_hook``, so a new kind
(resampling from other prompts, say) is one subclass registered with ``register_ablation`` and both
can use it. Attribution patching (``attribution``) estimates the effect of replacing a head's
output by a fixed value, so it takes the kinds that are one (zero and mean) and refuses others. **Which neurons** a mask
touches is its mode (``NEURON_MODES``): ``"zero"`` the listed ones, ``"keep"`` all but the listed
ones of the given layers.

Heads. The paper "intervenes the head by setting its parameters to zero". A head's only private
parameters after the attention pattern are its head_dim-wide slice of the o_proj INPUT (the
columns of o_proj's weight it multiplies), so we replace that slice with a forward pre-hook. Zero
is identical to zeroing those o_proj weight columns (the authors' code; ``zeroed_in_weights`` does
that, and the tests show the two agree). With grouped-query attention (GQA) query head h reads
key/value head h // (n_heads / n_kv_heads); the KV head is shared, so ablating query head h still
replaces only h's own o_proj input slice. Slices of the o_proj OUTPUT would be wrong: those d_model
slices are not heads. The mean (``head_means``) answers the question the paper leaves open, whether
zero ablation exaggerates effects.

Neurons. A neuron's coefficient score is the input of its down_proj column; zeroing it there is
the same as zeroing the column (tested).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from cna_utils.data.arithmetic import align
from cna_utils.measure.names import parse_heads, parse_neurons
from cna_utils.model.families import check_layer, down_proj, o_proj, spec, weight_out_in
from cna_utils.model.forward import answer_logits, encode, length_batches, model_device
from cna_utils.model.hooks import attached, capture_input, pre

__all__ = ["Ablation", "Zero", "Mean", "ABLATIONS", "ablation", "register_ablation", "head_mask_hook",
           "ablate_heads", "zeroed_in_weights", "head_means", "NEURON_MODES", "neuron_masks", "mask_neurons"]


class Ablation:
    """What replaces the output of an ablated head. ``apply`` gets the heads' outputs ``x``
    [..., H, head_dim], the mask [..., H, 1] (1 keep, 0 ablate) and the reference values (or None)
    and returns the new outputs; ``needs_reference`` says whether the kind needs ``means``."""
    name = ""
    needs_reference = False

    def apply(self, x: torch.Tensor, mask: torch.Tensor, ref: torch.Tensor | None) -> torch.Tensor:
        y = x * mask
        if ref is not None:
            y = y + (1 - mask) * ref.to(device=x.device, dtype=x.dtype)
        return y


class Zero(Ablation):
    """The paper's: the head's output slice is set to zero."""
    name = "zero"


class Mean(Ablation):
    """The head's mean output over a reference set (``head_means``) replaces it."""
    name = "mean"
    needs_reference = True


ABLATIONS: dict[str, Ablation] = {kind.name: kind for kind in (Zero(), Mean())}


def register_ablation(kind: Ablation) -> Ablation:
    """Make ``kind`` available by its name to ``ablate_heads`` and the head sweep."""
    if not kind.name:
        raise ValueError("an Ablation needs a name")
    ABLATIONS[kind.name] = kind
    return kind


def ablation(method: str | Ablation) -> Ablation:
    """The ``Ablation`` of a name (or the kind itself); a clear error for an unknown one."""
    if isinstance(method, Ablation):
        return method
    if method not in ABLATIONS:
        raise ValueError(f"unknown ablation method {method!r}: use one of {sorted(ABLATIONS)} "
                         "(or register_ablation a new kind)")
    return ABLATIONS[method]


def head_mask_hook(n_heads: int, head_dim: int, mask: torch.Tensor, ref: torch.Tensor | None,
                   kind: Ablation | str = "zero"):
    """Pre-hook for o_proj. mask: [R, H] (1 keep, 0 ablate), one row per batch row (R=1 broadcasts);
    ref: [H, head_dim] or None (what ``kind`` reads, e.g. the means)."""
    kind = ablation(kind)

    def hook(module, args):
        x = args[0]                                                    # [R, T, H*dh]
        shape = x.shape
        xh = x.view(*shape[:-1], n_heads, head_dim)                    # [R, T, H, dh]
        m = mask.to(device=x.device, dtype=x.dtype).view(mask.shape[0], *([1] * (xh.dim() - 3)), n_heads, 1)
        return (kind.apply(xh, m, ref).reshape(shape),) + tuple(args[1:])
    return hook


@contextmanager
def ablate_heads(model, heads, method: str = "zero", means: torch.Tensor | None = None):
    """Ablate the given heads while inside the block; hooks are removed on exit, even on errors.

    heads: ``[(layer, head), ...]`` or ``["17_22", ...]``. method: a name in ``ABLATIONS``: "zero" or
    "mean" (needs ``means`` from ``head_means``: [n_layers, n_heads, head_dim])."""
    kind = ablation(method)
    if kind.needs_reference and means is None:
        raise ValueError(f"method={method!r} needs means=head_means(model, tokenizer, reference_cases)")
    s = spec(model)
    by_layer: dict[int, list[int]] = {}
    for l, h in parse_heads(model, heads):
        by_layer.setdefault(l, []).append(h)
    hooks = []
    for l, hs in by_layer.items():
        mask = torch.ones(1, s.n_heads, device=model_device(model))
        mask[0, hs] = 0
        ref = means[l].to(mask.device) if kind.needs_reference else None
        hooks.append(pre(o_proj(model, l), head_mask_hook(s.n_heads, s.head_dim, mask, ref, kind)))
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


NEURON_MODES = {"zero": "zero the listed neurons", "keep": "zero every other neuron of the given layers"}


def neuron_masks(model, neurons, mode: str, layers, per_row: bool):
    """{layer: multiplier [N] or [rows, N]} for zero / keep interventions."""
    s = spec(model)
    if mode not in NEURON_MODES:
        raise ValueError(f"mode must be one of {sorted(NEURON_MODES)}, got {mode!r}")
    sets = neurons if per_row else [neurons]
    sets = [parse_neurons(model, ns) for ns in sets]
    if mode == "keep":
        if layers is None:
            raise ValueError("mode='keep' zeroes every other neuron of the given layers: pass layers=[...]")
        todo = sorted(set(layers))
        for l in todo:
            check_layer(model, l)
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
    masks = neuron_masks(model, neurons, mode, layers, per_row)

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
