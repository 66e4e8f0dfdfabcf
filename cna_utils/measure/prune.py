"""Pruning FFN neurons for real (paper Section 6.1): smaller up/gate/down matrices, fewer parameters.

Usage::

    keep = union_top_neurons(score, n_per_case=166, layers=scored, within=deep)   # {layer: [neuron, ...]}
    small = prune_ffn(copy.deepcopy(model), keep)                  # every other neuron of those layers removed
    ffn_parameters(small, deep), ffn_parameters(model, deep)
    rnd = random_keep(keep, d_mlp=1536, seed=0)                    # the same count per layer, at random

Removing neuron k of layer l deletes row k of the up (and gate) projection, its bias entry, and
column k of the down projection. The FFN output is ``sum_k m_k v_k``; a removed neuron contributes
nothing, which is exactly what zeroing its coefficient score does, so a pruned model's logits
equal the logits of the full model with those neurons zeroed (tested on every supported family).
After pruning, ``config.intermediate_size`` no longer describes the pruned layers: use the pruned
model for forwards and training, not for per-neuron analysis.
"""
from __future__ import annotations

import torch
from torch import nn

from cna_utils.model.families import (check_layer, family, in_layer, layers, spec, stores_in_out, submodule,
                                      weight_out_in)

__all__ = ["prune_ffn", "ffn_parameters", "union_top_neurons", "random_keep", "kept_count"]


def _as_linear(m: nn.Module) -> nn.Module:
    """A Linear equal to ``m`` (GPT-2's Conv1D stores its weight as [in, out] and cannot take zero
    inputs; a Linear can, so a layer may lose every neuron)."""
    if not stores_in_out(m):
        return m
    lin = nn.Linear(m.weight.shape[0], m.weight.shape[1], bias=m.bias is not None, device=m.weight.device,
                    dtype=m.weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(m.weight.t())
        if m.bias is not None:
            lin.bias.copy_(m.bias)
    lin.weight.requires_grad_(m.weight.requires_grad)
    return lin


def _param(t: torch.Tensor, like: nn.Parameter) -> nn.Parameter:
    return nn.Parameter(t.clone(), requires_grad=like.requires_grad)


def prune_ffn(model, keep: dict) -> nn.Module:
    """Remove, IN PLACE, every FFN neuron of the layers in ``keep`` except ``keep[layer]`` (a list
    of neuron indices, possibly empty; layers not in ``keep`` are untouched). Returns the model.
    Copy it first (``copy.deepcopy``) to keep the original."""
    fam = family(model)
    for l, ks in keep.items():
        check_layer(model, l)
        block = layers(model)[l]
        n_now = weight_out_in(submodule(block, fam.down)).shape[1]
        idx = torch.as_tensor(sorted(set(int(k) for k in ks)), dtype=torch.long)
        if len(idx) and (idx.min() < 0 or idx.max() >= n_now):
            raise IndexError(f"layer {l}: neuron index out of range; indices must be in 0..{n_now - 1}")
        for part in ("up", "gate", "down"):
            path = getattr(fam, part)
            if path is None:
                continue
            parent_path, _, attr = path.rpartition(".")
            parent = submodule(block, parent_path) if parent_path else block
            m = _as_linear(getattr(parent, attr))
            i = idx.to(m.weight.device)
            if part == "down":                               # the neuron side is the input
                m.weight = _param(m.weight.data[:, i], m.weight)
                m.in_features = len(i)
            else:                                            # the neuron side is the output
                m.weight = _param(m.weight.data[i], m.weight)
                m.out_features = len(i)
                if m.bias is not None:
                    m.bias = _param(m.bias.data[i], m.bias)
            setattr(parent, attr, m)
    return model


def ffn_parameters(model, layers=None) -> int:
    """Parameters (weights and biases) of the FFN blocks of ``layers`` (default: every layer)."""
    s = spec(model)
    total = 0
    for l in (range(s.n_layers) if layers is None else layers):
        total += sum(p.numel() for p in in_layer(model, l, "mlp").parameters())
    return total


def kept_count(keep: dict) -> int:
    return sum(len(v) for v in keep.values())


def union_top_neurons(score: torch.Tensor, n_per_case: int, layers, within=None) -> dict:
    """The union over cases of each case's ``n_per_case`` highest-scoring neurons among ``layers``,
    returned for the layers in ``within`` (default: all of ``layers``). The paper ranks each case's
    top-500 over every layer and then prunes only the deep layers: ``within=deep``.

    ``score``: [cases, len(layers), neurons] (e.g. a CNA score).
    Returns ``{layer: sorted neuron indices}`` with an entry for every layer of ``within`` (possibly empty)."""
    layers = list(layers)
    within = layers if within is None else list(within)
    if score.dim() != 3 or score.shape[1] != len(layers):
        raise ValueError(f"score must be [cases, {len(layers)} layers, neurons], got {tuple(score.shape)}")
    if n_per_case < 1:
        raise ValueError(f"n_per_case must be >= 1, got {n_per_case}")
    if not set(within) <= set(layers):
        raise ValueError(f"within={sorted(set(within) - set(layers))} are not among the scored layers")
    B, L, N = score.shape
    idx = score.reshape(B, -1).topk(min(n_per_case, L * N), dim=-1).indices.flatten().unique()
    keep = {l: [] for l in within}
    for flat in idx.tolist():
        li, k = divmod(flat, N)
        if layers[li] in keep:
            keep[layers[li]].append(k)
    return {l: sorted(v) for l, v in keep.items()}


def random_keep(keep: dict, d_mlp: int, seed: int = 0) -> dict:
    """As many neurons per layer as ``keep`` has, drawn uniformly at random (the paper's control)."""
    g = torch.Generator().manual_seed(seed)
    return {l: sorted(torch.randperm(d_mlp, generator=g)[:len(v)].tolist()) for l, v in keep.items()}
