"""Interactive figures (plotly) for the values a reader wants to look up one by one: hover a head of a
sweep heat map or a neuron of a CNA plot to read its name and value.

Usage (in a chapter)::

    show(head_heatmaps(summary, (n_layers, n_heads), value="drop", column="op"))

``show`` embeds the figure as HTML. plotly.js is written into the first figure of a page (about 4
MB, no network needed: the offline book works) and reused by the figures after it.
"""
from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = ["show", "head_heatmaps", "cna_scores"]

_PLOTLY_JS_WRITTEN = False
TITLE_CHARS = 60             # a title line that still fits the book's text column (about 700 px)


def _title(title: str | None) -> tuple[str | None, int]:
    """``title`` broken into lines that fit the page (plotly cuts a long one off), and the extra top
    margin (px) its additional lines need."""
    if not title:
        return title, 0
    lines = textwrap.wrap(title, TITLE_CHARS)
    return "<br>".join(lines), 20 * (len(lines) - 1)


def show(fig: go.Figure) -> None:
    """Display ``fig`` as HTML (plotly.js inline in the first figure of the kernel's session)."""
    global _PLOTLY_JS_WRITTEN
    from IPython.display import HTML, display
    html = fig.to_html(full_html=False, include_plotlyjs=not _PLOTLY_JS_WRITTEN,
                       config={"displaylogo": False, "responsive": True})
    _PLOTLY_JS_WRITTEN = True
    display(HTML(html))


def head_heatmaps(summary: pd.DataFrame, grid: tuple[int, int], value: str = "drop", column: str = "op",
                  panels=("all", "+", "-", "*", "/"), scale: float = 100.0, title: str | None = None,
                  unit: str = "points") -> go.Figure:
    """One layer x head heat map per panel (rows of ``summary`` with ``column == panel``), as the
    static ``plots.head_heatmaps``; hovering a cell shows the head ("layer_head") and its value.
    ``grid``: (layers, heads per layer) of the model."""
    n_layers, n_heads = grid
    panels = [p for p in panels if (summary[column] == p).any()]
    vmax = max(1e-9, float((summary[value] * scale).abs().max()))
    fig = make_subplots(rows=1, cols=len(panels), shared_yaxes=True, horizontal_spacing=0.02,
                        subplot_titles=[p if p != "all" else "all ops" for p in panels])
    for i, p in enumerate(panels, start=1):
        grid = np.full((n_layers, n_heads), np.nan)
        rows = summary[summary[column] == p]
        grid[rows["layer"].to_numpy(), rows["head"].to_numpy()] = rows[value].to_numpy() * scale
        names = [[f"{l}_{h}" for h in range(n_heads)] for l in range(n_layers)]
        fig.add_trace(go.Heatmap(z=grid, customdata=names, colorscale="RdBu_r", zmin=-vmax, zmax=vmax, zmid=0,
                                 showscale=i == len(panels), colorbar=dict(title=unit),
                                 hovertemplate=f"head %{{customdata}}<br>{p}: %{{z:.2f}} {unit}<extra></extra>"),
                      row=1, col=i)
        fig.update_xaxes(title_text="head", row=1, col=i)
    fig.update_yaxes(title_text="layer", row=1, col=1)
    title, more = _title(title)
    fig.update_layout(title=title, height=max(320, 14 * n_layers + 140) + more,
                      margin=dict(l=50, r=20, t=70 + more, b=40))
    return fig


def cna_scores(top: pd.DataFrame, mark: int | None = None, title: str | None = None, score: str = "score",
               extra=("imp_ori", "imp_inv")) -> go.Figure:
    """Every case's top CNA neurons (``neurons.top_neurons`` rows) as points: layer against CNA score;
    hovering shows the neuron, the case and ``extra`` columns. ``mark``: a line at that layer."""
    extra = [c for c in extra if c in top.columns]
    case = top["case"] if "case" in top.columns else pd.Series(0, index=top.index)
    jitter = np.random.default_rng(0).uniform(-0.25, 0.25, len(top))
    custom = np.stack([top["name"].astype(str), case.astype(str)] + [top[c].map("{:.3f}".format) for c in extra], -1)
    hover = "neuron %{customdata[0]}<br>case %{customdata[1]}<br>CNA score %{y:.3f}" + "".join(
        f"<br>{c} %{{customdata[{i + 2}]}}" for i, c in enumerate(extra)) + "<extra></extra>"
    fig = go.Figure(go.Scatter(x=top["layer"] + jitter, y=top[score], mode="markers", customdata=custom,
                               marker=dict(size=6, opacity=0.7), hovertemplate=hover))
    if mark is not None:
        fig.add_vline(x=mark - 0.5, line_dash="dash", line_color="firebrick",
                      annotation_text=f"head's layer {mark}", annotation_position="top left")
    title, more = _title(title)
    fig.update_layout(title=title, xaxis_title="FFN layer", yaxis_title="CNA score (nats)", height=380 + more,
                      margin=dict(l=50, r=20, t=60 + more, b=40))
    return fig
