"""Figures shared by the chapters (matplotlib + seaborn).

Usage::

    fig = head_heatmaps(summary, value="drop", column="op")
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

__all__ = ["head_heatmaps", "zero_vs_mean"]


def head_heatmaps(summary: pd.DataFrame, n_layers: int, n_heads: int, value: str = "drop", column: str = "op",
                  panels=("all", "+", "-", "*", "/"), scale: float = 100.0, title: str | None = None,
                  unit: str = "points"):
    """One layer x head heatmap per panel (rows of ``summary`` with ``column == panel``).
    ``value`` is multiplied by ``scale`` (accuracy points by default); unswept heads are blank."""
    panels = [p for p in panels if (summary[column] == p).any()]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.2 * len(panels) + 1.5, max(3.0, 0.16 * n_layers + 1)),
                             sharey=True, squeeze=False)
    vmax = max(1e-9, float((summary[value] * scale).abs().max()))
    for ax, p in zip(axes[0], panels):
        grid = np.full((n_layers, n_heads), np.nan)
        rows = summary[summary[column] == p]
        grid[rows["layer"].to_numpy(), rows["head"].to_numpy()] = rows[value].to_numpy() * scale
        sns.heatmap(grid, ax=ax, cmap="RdBu_r", center=0, vmin=-vmax, vmax=vmax, cbar=ax is axes[0][-1],
                    cbar_kws={"label": f"{value} ({unit})"} if ax is axes[0][-1] else None)
        ax.set_title(p if p != "all" else "all ops")
        ax.set_xlabel("head")
        ax.set_yticks(np.arange(0, n_layers, max(1, n_layers // 10)) + 0.5)
        ax.set_yticklabels(np.arange(0, n_layers, max(1, n_layers // 10)), rotation=0)
    axes[0][0].set_ylabel("layer")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def zero_vs_mean(frame: pd.DataFrame, x: str = "zero drop", y: str = "mean drop", label: str = "head"):
    """Scatter of the drop under zero ablation against mean ablation, one point per head."""
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.scatter(frame[x], frame[y])
    for _, r in frame.iterrows():
        ax.annotate(r[label], (r[x], r[y]), fontsize=7, xytext=(2, 2), textcoords="offset points")
    lo = min(frame[x].min(), frame[y].min(), 0)
    hi = max(frame[x].max(), frame[y].max(), 1)
    ax.plot([lo, hi], [lo, hi], color="gray", lw=0.8, ls="--")
    ax.set_xlabel(f"{x} (points)")
    ax.set_ylabel(f"{y} (points)")
    fig.tight_layout()
    return fig
