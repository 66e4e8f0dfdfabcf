"""Static figures shared by the chapters (matplotlib + seaborn); the interactive ones are in
``interactive``.

Usage::

    fig = neuron_layers(top, n_layers, mark=head_layer)
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

__all__ = ["zero_vs_mean", "neuron_layers", "score_vs_effect", "drawable", "pe_dag", "logic_chain",
           "accuracy_by_layer", "loss_curves", "attention_map"]


def zero_vs_mean(frame: pd.DataFrame, x: str = "zero drop", y: str = "mean drop", label: str = "head"):
    """Scatter of the drop under zero ablation against mean ablation, one point per head; with
    columns "<x> lo", "<x> hi" (and the same for ``y``) each point carries its 95% interval."""
    fig, ax = plt.subplots(figsize=(4.5, 4))
    err = lambda c: (np.vstack([frame[c] - frame[f"{c} lo"], frame[f"{c} hi"] - frame[c]])
                     if f"{c} lo" in frame else None)
    ax.errorbar(frame[x], frame[y], xerr=err(x), yerr=err(y), fmt="o", capsize=2, elinewidth=0.8)
    for _, r in frame.iterrows():
        ax.annotate(r[label], (r[x], r[y]), fontsize=7, xytext=(2, 2), textcoords="offset points")
    lo = min(frame[x].min(), frame[y].min(), 0)
    hi = max(frame[x].max(), frame[y].max(), 1)
    ax.plot([lo, hi], [lo, hi], color="gray", lw=0.8, ls="--")
    ax.set_xlabel(f"{x} (points)")
    ax.set_ylabel(f"{y} (points)")
    fig.tight_layout()
    return fig


def estimate_vs_exact(frame: pd.DataFrame, column: str = "op"):
    """Two scatters of the attribution-patching estimate against the exact ablation, one point per
    confirmed head and ``column`` value: the log-prob drop (nats) and the accuracy drop (points)."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, (x, y, unit) in zip(axes, [("exact_logprob_drop", "est_logprob_drop", "nats"),
                                       ("exact_drop", "est_drop", "points")]):
        sns.scatterplot(data=frame, x=x, y=y, hue=column, ax=ax, s=25)
        lo, hi = min(frame[x].min(), frame[y].min(), 0), max(frame[x].max(), frame[y].max(), 1e-3)
        ax.plot([lo, hi], [lo, hi], color="gray", lw=0.8, ls="--")
        ax.set_xlabel(f"exact ({unit})")
        ax.set_ylabel(f"estimated ({unit})")
    axes[0].set_title("drop in log p(answer)")
    axes[1].set_title("accuracy drop")
    fig.tight_layout()
    return fig


def neuron_layers(top: pd.DataFrame, n_layers: int, mark=None, title: str | None = None):
    """How many of the cases' top neurons sit in each layer (bars); ``mark`` draws a vertical line
    (e.g. the ablated head's layer)."""
    counts = top.layer.value_counts().reindex(range(n_layers), fill_value=0)
    fig, ax = plt.subplots(figsize=(7, 2.8))
    ax.bar(counts.index, counts.values, color="tab:blue")
    if mark is not None:
        ax.axvline(mark - 0.5, color="tab:red", ls="--", lw=1)
        ax.text(mark - 0.4, counts.max() * 0.95, f"head's layer {mark}", color="tab:red", fontsize=8)
    ax.set_xlabel("FFN layer")
    ax.set_ylabel("neurons")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def score_vs_effect(frame: pd.DataFrame, x: str = "score", y: str = "effect"):
    """Static importance score against the causal effect of zeroing the neuron, one point per
    (case, neuron), coloured by case."""
    fig, ax = plt.subplots(figsize=(4.8, 4))
    sns.scatterplot(data=frame, x=x, y=y, hue="case", palette="tab10", legend=False, ax=ax, s=18)
    lo = min(frame[x].min(), frame[y].min(), 0)
    hi = max(frame[x].max(), frame[y].max())
    ax.plot([lo, hi], [lo, hi], color="gray", lw=0.8, ls="--")
    ax.set_xlabel("importance score (static, nats)")
    ax.set_ylabel("drop in log p(answer) when zeroed (nats)")
    fig.tight_layout()
    return fig


def drawable(text: str, font: str = "DejaVu Sans") -> str:
    """``text`` with every character the figure's font has no glyph for written as its escape
    (``\\u4e2d``), so a token in another script reads as a code instead of an empty box."""
    from matplotlib import font_manager
    cmap = _charmap(font_manager.findfont(font))
    return "".join(c if ord(c) in cmap or c in "\n " else c.encode("unicode_escape").decode() for c in text)


_CHARMAPS: dict[str, set[int]] = {}


def _charmap(path: str) -> set[int]:
    if path not in _CHARMAPS:
        from matplotlib import ft2font
        _CHARMAPS[path] = set(ft2font.FT2Font(path).get_charmap())
    return _CHARMAPS[path]


def pe_dag(nodes: pd.DataFrame, edges: pd.DataFrame, weight: str = "subvalue_ip_sum", title: str | None = None):
    """The prediction-enhancing DAG, laid out in layers: one row per FFN layer that holds a node
    (the layer's number on the left, lowest at the bottom), the row's neurons side by side, each a
    box with its name and ``label`` (its top token, escaped where the font lacks the glyph); an
    arrow lower -> upper per edge, red when it enhances, width proportional to ``weight``."""
    rows = {l: i for i, l in enumerate(sorted(nodes.layer.unique()))}
    widest = int(nodes.groupby("layer").size().max()) if len(nodes) else 1
    fig, ax = plt.subplots(figsize=(max(6.0, 1.9 * widest + 1.2), 1.0 + 1.05 * max(len(rows), 1)))
    pos = {}
    for layer, grp in nodes.groupby("layer"):
        for j, name in enumerate(grp["name"]):
            pos[name] = (j - (len(grp) - 1) / 2, rows[layer])
    wmax = max(1e-9, float(edges[weight].abs().max())) if len(edges) else 1.0
    for _, e in edges.iterrows():
        (x0, y0), (x1, y1) = pos[e.lower], pos[e.upper]
        ax.annotate("", xy=(x1, y1 - 0.22), xytext=(x0, y0 + 0.22),
                    arrowprops=dict(arrowstyle="-|>", lw=0.6 + 3.0 * abs(e[weight]) / wmax,
                                    color="tab:red" if e[weight] > 0 else "tab:blue", alpha=0.65,
                                    connectionstyle="arc3,rad=0.08" if abs(x1 - x0) < 1e-9 and y1 - y0 > 1 else None,
                                    shrinkA=0, shrinkB=0), zorder=2)
    for _, r in nodes.iterrows():
        x, y = pos[r["name"]]
        label = drawable(str(r["label"]))
        label = label if len(label) <= 16 else label[:15] + "…"
        ax.text(x, y, f"{r['name']}\n{label!s}", ha="center", va="center", fontsize=9, zorder=4,
                bbox=dict(boxstyle="round,pad=0.35", fc="white", ec="black", lw=0.8))
    ax.set_yticks(list(rows.values()))
    ax.set_yticklabels([f"layer {l}" for l in rows])
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlim(-(widest - 1) / 2 - 0.75, (widest - 1) / 2 + 0.75)
    ax.set_xticks([])
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    ax.set_title(title or "PE-DAG (red: pushes the upper neuron's key up; width: size)", fontsize=10)
    fig.tight_layout()
    return fig


def logic_chain(stages: list[tuple[str, str]], title: str | None = None):
    """Figure 1 of the paper as boxes and arrows: ``stages`` is a list of (stage name, text). Each
    box is sized to its text (lines cut at 26 characters, glyphs the font lacks escaped); more than
    four stages take two rows, the second read from right to left under the first's end."""
    n = len(stages)
    per_row = n if n <= 4 else (n + 1) // 2
    n_rows = (n + per_row - 1) // per_row
    fig, ax = plt.subplots(figsize=(2.4 * per_row + 0.4, 2.4 * n_rows + 0.5))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")
    boxes = []
    for i, (name, text) in enumerate(stages):
        row, col = divmod(i, per_row)
        col = col if row % 2 == 0 else per_row - 1 - col
        x, y = (col + 0.5) / per_row, 1 - (row + 0.5) / n_rows
        lines = [drawable(line if len(line) <= 26 else line[:25] + "…") for line in str(text).splitlines()]
        ax.text(x, y + 0.5 / n_rows - 0.04, name, ha="center", va="top", fontsize=10, weight="bold")
        boxes.append(ax.text(x, y - 0.05, "\n".join(lines), ha="center", va="center", fontsize=8.5,
                             linespacing=1.3, bbox=dict(boxstyle="round,pad=0.6", fc="#eef3fb", ec="#3b6fb6", lw=1)))
    fig.canvas.draw()                                  # the boxes' sizes are known once drawn
    to_data = ax.transData.inverted()
    ext = [to_data.transform(t.get_bbox_patch().get_window_extent()) for t in boxes]   # [[x0, y0], [x1, y1]]
    for i in range(n - 1):
        (ax0, ay0), (ax1, ay1) = ext[i]
        (bx0, by0), (bx1, by1) = ext[i + 1]
        if (i + 1) % per_row == 0:                     # down to the next row's stage name
            start, end = ((ax0 + ax1) / 2, ay0), ((bx0 + bx1) / 2, 1 - ((i + 1) // per_row) / n_rows - 0.03)
        elif (i // per_row) % 2 == 0:                  # left to right
            start, end = (ax1, (ay0 + ay1) / 2), (bx0, (by0 + by1) / 2)
        else:                                          # right to left
            start, end = (ax0, (ay0 + ay1) / 2), (bx1, (by0 + by1) / 2)
        ax.annotate("", xy=end, xytext=start, arrowprops=dict(arrowstyle="-|>", color="#3b6fb6", lw=1.2,
                                                              shrinkA=3, shrinkB=3))
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def _wilson_err(percent, n: int | None) -> np.ndarray | None:
    """Error bars (below, above) of percentages of n cases: their 95% Wilson intervals; None without n."""
    if not n:
        return None
    from cna_utils.measure.stats import wilson
    pct = np.asarray(percent, dtype=float).reshape(-1)
    bounds = np.array([wilson(p / 100 * n, n) for p in pct]) * 100          # [k, 2]
    return np.clip(np.stack([pct - bounds[:, 0], bounds[:, 1] - pct]), 0, None)


def accuracy_by_layer(frame: pd.DataFrame, base, x: str = "layer", ys=("test_acc", "test_first"),
                      labels=("whole answer", "first token"), title: str | None = None, n: int | None = None):
    """Accuracy (%) of one model per layer (e.g. a LoRA model per attention layer) against the
    original model's accuracies (dashed), given as one value per line of ``ys``; with ``n`` (cases)
    every point carries its 95% Wilson interval and each original accuracy a band."""
    fig, ax = plt.subplots(figsize=(7, 3.4))
    for i, (y, lab) in enumerate(zip(ys, labels)):
        line = ax.errorbar(frame[x], 100 * frame[y], yerr=_wilson_err(100 * frame[y], n), marker="o", capsize=3,
                           label=f"LoRA, {lab}").lines[0]
        b = 100 * list(base)[i]
        ax.axhline(b, color=line.get_color(), ls="--", lw=1, label=f"original, {lab}")
        if n:
            lo, hi = _wilson_err([b], n)[:, 0]
            ax.axhspan(b - lo, b + hi, color=line.get_color(), alpha=0.12, lw=0)
    ax.set_xlabel(x)
    ax.set_ylabel("accuracy (%)")
    ax.legend(frameon=False, fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def loss_curves(runs, window: int = 10, title: str | None = None):
    """Training loss per step of each run (a moving average over ``window`` steps), one line per
    run labelled by its layer and learning rate."""
    fig, ax = plt.subplots(figsize=(7, 3.4))
    cmap = plt.get_cmap("viridis")
    runs = list(runs)
    for i, r in enumerate(runs):
        loss = pd.Series(r["losses"]).rolling(window, min_periods=1).mean()
        ax.plot(loss.index + 1, loss.values, color=cmap(i / max(1, len(runs) - 1)), lw=1.2,
                label=f"layer {r['layer']}, lr {r['lr']:g}")
    ax.set_xlabel("training step")
    ax.set_ylabel(f"loss (moving mean of {window})")
    ax.legend(frameon=False, fontsize=7, ncol=2)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def attention_map(tokens: list[str], weights, title: str | None = None, mark=()):
    """One head's attention pattern [T, T] as a heat map (row: the position that attends; column:
    the position attended to), the tokens on both axes; ``mark`` underlines columns (the operands)."""
    w = np.asarray(weights, dtype=float)
    labels = [repr(t)[1:-1] or "(empty)" for t in tokens]
    size = max(3.5, 0.32 * len(tokens) + 1.5)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    sns.heatmap(w, ax=ax, cmap="viridis", vmin=0, vmax=1, square=True, xticklabels=labels, yticklabels=labels,
                cbar_kws=dict(label="attention weight", shrink=0.8))
    for c in mark:
        ax.add_patch(plt.Rectangle((c, len(tokens) - 1), 1, 1, fill=False, edgecolor="red", lw=2))
    ax.set_xlabel("attended position")
    ax.set_ylabel("attending position")
    ax.tick_params(axis="x", labelrotation=90)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def mask_keep_lines(curve: pd.DataFrame, n_deep: int, n: int | None = None):
    """Mask and keep's accuracy decrease (%) against k on a log axis (``paper.neurons.mask_keep_curve``);
    with ``n`` (cases, all answered before) each point carries its 95% Wilson interval."""
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    ax.errorbar(curve.index, curve["mask"], yerr=_wilson_err(curve["mask"], n), fmt="o-", capsize=3,
                label="mask: zero the top-k")
    ax.errorbar(curve.index, curve["keep"], yerr=_wilson_err(curve["keep"], n), fmt="s-", capsize=3,
                label="keep: zero all other deep neurons")
    ax.set_xscale("log")
    ax.set_xlabel("k (top CNA neurons)")
    ax.set_ylabel("accuracy decrease (%)")
    ax.legend(fontsize=8)
    ax.set_title(f"Mask and keep for larger k ({n_deep:,} deep neurons)")
    fig.tight_layout()
    return fig


def zero_shot_curve(t8: pd.DataFrame, paper8: pd.DataFrame, thresholds=range(4), bands: pd.DataFrame | None = None):
    """Table 8 as a curve over M: this run's hidden-interpretable set, random sets of the same size
    and the paper's numbers; each point labelled with its set size. ``bands``
    (``paper.measures.zero_shot_bands``): each of this run's curves carries its 95% interval."""
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    xs = list(thresholds)
    ours = t8[[f"M={m}" for m in xs]]
    for row, part, fmt, label in [("accuracy_decrease", "chosen", "o-", "hidden-interpretable set"),
                                  ("random_decrease", "random", "s--", "random set, same size")]:
        line, = ax.plot(xs, ours.loc[row], fmt, label=label)
        if bands is not None:
            b = bands.loc[[f"M={m}" for m in xs]]
            ax.fill_between(xs, b[f"{part}_lo"].astype(float), b[f"{part}_hi"].astype(float),
                            color=line.get_color(), alpha=0.15, lw=0)
    ax.plot(xs, paper8.loc["accuracy_decrease"], "^:", color="gray", label="paper (Llama-7B)")
    for x, n in zip(xs, ours.loc["number"]):
        ax.annotate(f"{int(n):,}", (x, ours.loc["accuracy_decrease"].iloc[x]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xticks(xs, [f"M={m}" for m in xs])
    ax.set_ylabel("accuracy decrease (%)")
    ax.legend(fontsize=7)
    ax.set_title("Zeroing hidden-interpretable shallow neurons (labels: set size"
                 + ("; bands: 95% intervals)" if bands is not None else ")"))
    fig.tight_layout()
    return fig


def pruning_bars(t11: pd.DataFrame, kept: dict, d_mlp: int, n: int | None = None):
    """Table 11 as bars (with ``n`` test sentences, each with its 95% Wilson interval), beside the
    number of neurons kept in each deep layer."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    bars = t11.rename(index={"acc": "whole answer"}).T
    err = None if not n else {c: _wilson_err(bars[c], n) for c in bars.columns}
    bars.plot.bar(ax=axes[0], rot=20, yerr=err, capsize=2)
    axes[0].set_ylabel("accuracy (%)")
    axes[0].set_title("Table 11 on this model")
    pd.Series({l: len(v) for l, v in kept.items()}).plot.bar(ax=axes[1], color="grey", rot=0)
    axes[1].set_xlabel("deep layer")
    axes[1].set_ylabel("neurons kept")
    axes[1].set_title(f"kept neurons per layer (of {d_mlp})")
    fig.tight_layout()
    return fig


def bias_by_k(t13: pd.DataFrame, prompt_sets, ks, random_label, bands: pd.DataFrame | None = None):
    """The total gender bias of each prompt set against the number of neurons zeroed: the top-k CNA
    neurons and k random ones (``random_label(k)`` names the random rows of ``t13``). ``bands``
    (``paper.measures.bias_bands``): each curve carries its 95% interval over professions."""
    fig, axes = plt.subplots(1, len(prompt_sets), figsize=(11, 3.2), sharey=True)
    for ax, pname in zip(axes, prompt_sets):
        for rows, style, label in [(["original"] + [f"top-{k}" for k in ks], dict(marker="o"), "top-k CNA neurons"),
                                   (["original"] + [random_label(k) for k in ks], dict(marker="s", ls="--"),
                                    "k random neurons")]:
            line, = ax.plot([0] + ks, [t13.loc[r, (pname, "total")] for r in rows], label=label, **style)
            if bands is not None:
                ax.fill_between([0] + ks, [bands.loc[r, (pname, "lo")] for r in rows],
                                [bands.loc[r, (pname, "hi")] for r in rows], color=line.get_color(), alpha=0.15, lw=0)
        ax.set_title(pname)
        ax.set_xlabel("neurons zeroed")
    axes[0].set_ylabel("total bias (nats)" + (", 95% bands" if bands is not None else ""))
    axes[0].legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig
