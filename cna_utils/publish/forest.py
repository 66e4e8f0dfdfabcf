"""The results at a glance: every claim's number and 95% interval on one scale, the verdict's.

Usage::

    rows = forest_rows(load_all("book/results"))          # one row per judged claim, per part of the book
    forest_figure(rows[rows.part == "main model"], "Main model").savefig("forest.png")

Claims are measured in different units (points, nats, ranks, counts), so the figure places each on
the scale its own rule defines (``margin``): 0 is the rule's *replicates* threshold and -1 its
*partly* threshold, so the verdict regions line up for every claim: right of 0 replicates, between
-1 and 0 partly, left of -1 does not. A two-sided rule (a band) folds the value: inside the band
counts from 0 at an edge to 1 at its middle. Each row shows this run's value and its interval (the
interval's image on the scale) coloured by the verdict, and the paper's own value (a diamond; by
construction of the rules it lies at or right of 0).
"""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from cna_utils.publish.scoreboard import judged

__all__ = ["margin", "forest_rows", "forest_figure", "COLOURS", "PARTS"]

COLOURS = {"replicates": "#2e7d32", "partly": "#ef8c00", "does not": "#c62828", "inconclusive": "#7a7a7a"}
PARTS = ("main model", "division study", "second model")
SHOWN = (-3.0, 1.5)            # the scale's shown range; a value beyond it sits at the edge, marked


def _side(x: float, edge: float, other: float, width: float, outward: float) -> float:
    """The scale left of a replicates edge: -1 at the partly edge ``other`` (``outward`` = +1 when
    values below ``edge`` leave the region, -1 when values above do); with no partly region on this
    side (other == edge) the value lands straight in the does-not region."""
    gap = (edge - other) * outward
    past = (edge - x) * outward                          # > 0: how far outside the replicates region
    if gap > 0:
        return -past / gap
    return -1.0 - past / (width or abs(edge) or 1.0)


def margin(x: float, threshold: dict) -> float:
    """``x`` on the verdict's scale of a rule's ``threshold`` (``{"kind": "higher" | "lower" |
    "band", "replicates": ..., "partly": ...}``): 0 at the replicates threshold, -1 at the partly
    threshold, > 0 inside the replicates region."""
    kind, r = threshold["kind"], threshold["replicates"]
    p = threshold.get("partly", r)                     # no partly region: below the threshold, does not
    if kind == "higher":
        return (x - r) / ((r - p) if r > p else abs(r) or 1.0) if x >= r else _side(x, r, p, abs(r), +1)
    if kind == "lower":
        return (r - x) / ((p - r) if p > r else abs(r) or 1.0) if x <= r else _side(x, r, p, abs(r), -1)
    (rlo, rhi), (plo, phi) = r, p
    width = rhi - rlo
    if x < rlo:
        return _side(x, rlo, plo, width, +1)
    if x > rhi:
        return _side(x, rhi, phi, width, -1)
    return min(x - rlo, rhi - x) / (width / 2) if width > 0 else 0.0


def _span(lo: float, hi: float, threshold: dict) -> tuple[float, float]:
    """The image of the interval [lo, hi] on the scale (a band's scale is not monotonic)."""
    xs = np.linspace(lo, hi, 201) if hi > lo else np.array([lo])
    ys = [margin(float(x), threshold) for x in xs]
    return min(ys), max(ys)


def _part(name: str) -> str:
    return "second model" if name.startswith("second/") else "division study" if name.endswith("_division") \
        else "main model"


def forest_rows(loaded: dict) -> pd.DataFrame:
    """One row per judged claim of a build's results files (``scoreboard.load_all``): ``part``,
    ``chapter``, ``rule_id``, ``claim``, ``verdict``, ``n``, and on the verdict's scale ``value``,
    ``lo``, ``hi`` (this run) and ``paper``."""
    rows = []
    for name, records in judged(loaded).items():
        for r in records or []:
            t, v = r.get("threshold"), r.get("value")
            if not t or v is None or (isinstance(v, float) and math.isnan(v)):
                continue
            lo, hi = r.get("interval") or (v, v)
            a, b = _span(float(lo), float(hi), t)
            rows.append(dict(part=_part(name), chapter=name.split("/")[-1], rule_id=r["rule_id"], claim=r["claim"],
                             verdict=r["verdict"], n=r.get("n"), value=margin(float(v), t), lo=a, hi=b,
                             paper=margin(float(r["paper"]), t) if r.get("paper") is not None else float("nan")))
    return pd.DataFrame(rows, columns=["part", "chapter", "rule_id", "claim", "verdict", "n", "value", "lo", "hi",
                                       "paper"])


def forest_figure(rows: pd.DataFrame, title: str | None = None):
    """The forest plot of ``forest_rows`` (one part of the book, say): one line per claim, labelled
    with its rule id and n, the verdict regions shaded."""
    rows = rows.reset_index(drop=True)
    n = len(rows)
    fig, ax = plt.subplots(figsize=(9, 0.9 + 0.26 * max(n, 1)))
    lo_x, hi_x = SHOWN
    for x0, x1, verdict in ((lo_x, -1, "does not"), (-1, 0, "partly"), (0, hi_x, "replicates")):
        ax.axvspan(x0, x1, color=COLOURS[verdict], alpha=0.07, lw=0)
    for x in (-1, 0):
        ax.axvline(x, color="#555555", lw=0.8, ls="--")
    def clip(x):
        return min(max(x, lo_x), hi_x)

    for i, r in rows.iterrows():
        y = n - 1 - i
        c = COLOURS.get(r.verdict, "#000000")
        ax.plot([clip(r.lo), clip(r.hi)], [y, y], color=c, lw=2.2, solid_capstyle="butt")
        beyond = r.value < lo_x or r.value > hi_x
        ax.plot(clip(r.value), y, marker="<" if r.value < lo_x else ">" if beyond else "o", color=c, ms=5)
        if r.paper == r.paper:
            ax.plot(clip(r.paper), y, marker="D", color="black", ms=3.5, mfc="white", zorder=3)
    ax.set_yticks(range(n))
    ax.set_yticklabels([f"{r.rule_id} (n={r.n})" for r in rows.iloc[::-1].itertuples()], fontsize=7.5)
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_xlim(lo_x - 0.05, hi_x + 0.05)
    ax.set_xlabel("on the rule's scale: 0 = replicates threshold, -1 = partly threshold")
    handles = [plt.Line2D([], [], color=c, marker="o", lw=2, label=v) for v, c in COLOURS.items()]
    handles.append(plt.Line2D([], [], color="black", marker="D", mfc="white", lw=0, label="paper"))
    ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=5, fontsize=8, frameon=False)
    if title:
        ax.set_title(title, loc="left", pad=22, fontsize=10)
    fig.tight_layout()
    return fig
