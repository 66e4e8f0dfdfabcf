"""The paper's Llama-7B layer ranges (32 layers) scaled to a model of another depth.

Usage::

    depth_map(24)["deep"]          # the paper's deep FFN layers 17-31, scaled: [13, ..., 23]
    scale_layer(9, 24)             # the layer at the depth of Llama-7B's layer 9: 7
"""
from __future__ import annotations

__all__ = ["PAPER_LAYERS", "depth_map", "scale_layer", "spread_layers", "lora_groups", "lora_layers", "TABLE9_LAYERS"]

PAPER_LAYERS = 32          # Llama-7B
PAPER_DEEP_START = 17      # "17th-31th layers" (deep FFN layers, Table 5)
PAPER_SHALLOW_FFN_END = 16    # FFN layers 0-15 (Table 8)
PAPER_SHALLOW_ATTN_END = 17   # attention layers 0-16 (Table 8)


def spread_layers(n_layers: int, k: int | None) -> list[int]:
    """``k`` evenly spread layers including the first and the last (all layers when k is None)."""
    if k is None or k >= n_layers:
        return list(range(n_layers))
    if k == 1:
        return [n_layers // 2]
    return sorted({round(i * (n_layers - 1) / (k - 1)) for i in range(k)})


def depth_map(n_layers: int) -> dict:
    """The paper's Llama-7B layer ranges scaled to a model with ``n_layers`` layers (same fraction of
    depth): ``deep`` (Table 5's 17-31), ``shallow_ffn`` (Table 8's FFN 0-15) and ``shallow_attn``
    (attention 0-16), each a list of layer numbers."""
    def at(x):
        return int(round(x * n_layers / PAPER_LAYERS))
    return dict(deep=list(range(at(PAPER_DEEP_START), n_layers)),
                shallow_ffn=list(range(at(PAPER_SHALLOW_FFN_END))),
                shallow_attn=list(range(at(PAPER_SHALLOW_ATTN_END))))


def scale_layer(paper_layer: int, n_layers: int) -> int:
    """The layer at the same fraction of depth as Llama-7B's ``paper_layer`` (of 32)."""
    return min(n_layers - 1, int(round(paper_layer * n_layers / PAPER_LAYERS)))


def lora_groups(n_layers: int) -> dict:
    """Table 10's groups of LoRA layers (the paper's 1-9, 10-16, 17-30 of 32) scaled to ``n_layers``;
    the first and last layer stay out, as the paper leaves out its 0th and 31st."""
    b = [scale_layer(x, n_layers) for x in (1, 10, 17, 31)]
    return {"1-9": list(range(b[0], b[1])), "10-16": list(range(b[1], b[2])), "17-30": list(range(b[2], b[3]))}


TABLE9_LAYERS = (9, 15, 16, 19, 20)


def lora_layers(n_layers: int, k: int | None, table9: bool = True) -> list[int]:
    """The LoRA layers a chapter trains: ``k`` evenly spread layers (every layer for None), plus
    the paper's Table 9 layers (9, 15, 16, 19, 20 of 32) scaled when ``table9``."""
    extra = {scale_layer(x, n_layers) for x in TABLE9_LAYERS} if table9 else set()
    return sorted(set(spread_layers(n_layers, k)) | extra)
