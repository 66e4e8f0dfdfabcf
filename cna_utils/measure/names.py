"""Names of heads and neurons: parsed once, printed once.

A head is ``Head(layer, head)`` and a neuron ``Neuron(layer, index)``; both are tuples, so they
compare equal to ``(17, 22)`` and serialise as ``[17, 22]``. The paper writes them "17_22" and
"28_3696" (``head_name``, ``neuron_name``, or ``.name``).

Usage::

    parse_heads(model, ["17_22", (15, 9)])      # [Head(layer=17, head=22), Head(layer=15, head=9)], range-checked
    parse_neurons(model, ["28_3696"])           # [Neuron(layer=28, index=3696)]
    head_name(17, 22)                           # "17_22"
"""
from __future__ import annotations

from typing import NamedTuple

from cna_utils.model.families import check_layer, spec

__all__ = ["Head", "Neuron", "head_name", "neuron_name", "parse_pair", "parse_heads", "parse_neurons"]


class Head(NamedTuple):
    layer: int
    head: int
    name = property(lambda self: head_name(*self), doc='The paper\'s name, "17_22".')


class Neuron(NamedTuple):
    layer: int
    index: int
    name = property(lambda self: neuron_name(*self), doc='The paper\'s name, "28_3696".')


def parse_pair(item, what: str, form: str, example: str) -> tuple[int, int]:
    """``"17_22"`` or ``(17, 22)`` -> (17, 22); ``what``, ``form``, ``example`` word the error."""
    if isinstance(item, str):
        try:
            a, b = (int(x) for x in item.split("_"))
        except ValueError:
            raise ValueError(f"{what} {item!r} is not of the form {form!r}, e.g. {example!r}") from None
        return a, b
    a, b = (int(x) for x in item)
    return a, b


def head_name(layer: int, head: int) -> str:
    """The paper's "layer_head" name, e.g. (17, 22) -> "17_22"."""
    return f"{layer}_{head}"


def neuron_name(layer: int, k: int) -> str:
    """The paper's name of neuron k in FFN layer l, e.g. (28, 3696) -> "28_3696"."""
    return f"{layer}_{k}"


def parse_heads(model, heads) -> list[Head]:
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
        out.append(Head(l, k))
    return out


def parse_neurons(model, neurons) -> list[Neuron]:
    """Normalise ``["28_3696", (25, 7164), ...]`` to (layer, index) pairs and check their range."""
    s = spec(model)
    out = []
    for n in neurons:
        l, k = parse_pair(n, "neuron", "layer_index", "28_3696")
        check_layer(model, l, f"neuron {neuron_name(l, k)}: layer")
        if not 0 <= k < s.d_mlp:
            raise IndexError(f"neuron {neuron_name(l, k)}: index {k} is out of range 0..{s.d_mlp - 1} "
                             f"(this model has {s.d_mlp} FFN neurons per layer)")
        out.append(Neuron(l, k))
    return out
