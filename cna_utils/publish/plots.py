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

__all__ = ["zero_vs_mean", "neuron_layers", "score_vs_effect", "pe_dag", "logic_chain",
           "accuracy_by_layer", "loss_curves", "attention_map"]


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


def pe_dag(nodes: pd.DataFrame, edges: pd.DataFrame, weight: str = "subvalue_ip_sum", title: str | None = None):
    """The prediction-enhancing DAG: neurons placed by layer (y) and rank (x), labelled with their
    top token; an arrow lower -> upper per edge, width proportional to ``weight``."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    pos = {}
    for layer, grp in nodes.groupby("layer"):
        for j, (_, r) in enumerate(grp.iterrows()):
            pos[r["name"]] = (j - (len(grp) - 1) / 2, layer)
    wmax = max(1e-9, float(edges[weight].abs().max())) if len(edges) else 1.0
    for _, e in edges.iterrows():
        (x0, y0), (x1, y1) = pos[e.lower], pos[e.upper]
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops=dict(arrowstyle="-|>", lw=0.5 + 3.5 * abs(e[weight]) / wmax,
                                    color="tab:red" if e[weight] > 0 else "tab:blue", alpha=0.7,
                                    shrinkA=12, shrinkB=12))
    for _, r in nodes.iterrows():
        x, y = pos[r["name"]]
        ax.scatter([x], [y], s=420, color="white", edgecolor="black", zorder=3)
        ax.text(x, y, f"{r['name']}\n{r['label']}", ha="center", va="center", fontsize=7, zorder=4)
    ys = [p[1] for p in pos.values()]
    ax.set_ylim(min(ys) - 1, max(ys) + 1)
    xs = [p[0] for p in pos.values()]
    ax.set_xlim(min(xs) - 1, max(xs) + 1)
    ax.set_ylabel("FFN layer")
    ax.set_xticks([])
    ax.set_title(title or "PE-DAG (red: pushes the upper neuron's key up; width: size)")
    fig.tight_layout()
    return fig


def logic_chain(stages: list[tuple[str, str]], title: str | None = None):
    """Figure 1 of the paper as boxes and arrows: ``stages`` is a list of (stage name, text)."""
    fig, ax = plt.subplots(figsize=(11, 2.9))
    n = len(stages)
    for i, (name, text) in enumerate(stages):
        x = i / n
        ax.add_patch(plt.Rectangle((x + 0.01, 0.12), 1 / n - 0.04, 0.7, fill=True, color="#eef3fb", ec="#3b6fb6"))
        ax.text(x + 0.5 / n - 0.01, 0.76, name, ha="center", va="top", fontsize=9, weight="bold")
        ax.text(x + 0.5 / n - 0.01, 0.62, text, ha="center", va="top", fontsize=7.5, wrap=True)
        if i < n - 1:
            ax.annotate("", xy=((i + 1) / n + 0.01, 0.47), xytext=((i + 1) / n - 0.03, 0.47),
                        arrowprops=dict(arrowstyle="-|>", color="#3b6fb6"))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 0.9)
    ax.axis("off")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def accuracy_by_layer(frame: pd.DataFrame, base, x: str = "layer", ys=("test_acc", "test_first"),
                      labels=("whole answer", "first token"), title: str | None = None):
    """Accuracy (%) of one model per layer (e.g. a LoRA model per attention layer) against the
    original model's accuracies (dashed), given as one value per line of ``ys``."""
    fig, ax = plt.subplots(figsize=(7, 3.4))
    for i, (y, lab) in enumerate(zip(ys, labels)):
        line, = ax.plot(frame[x], 100 * frame[y], marker="o", label=f"LoRA, {lab}")
        ax.axhline(100 * list(base)[i], color=line.get_color(), ls="--", lw=1, label=f"original, {lab}")
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


def mask_keep_lines(curve: pd.DataFrame, n_deep: int):
    """Mask and keep's accuracy decrease (%) against k on a log axis (``paper.neurons.mask_keep_curve``)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    ax.plot(curve.index, curve["mask"], "o-", label="mask: zero the top-k")
    ax.plot(curve.index, curve["keep"], "s-", label="keep: zero all other deep neurons")
    ax.set_xscale("log")
    ax.set_xlabel("k (top CNA neurons)")
    ax.set_ylabel("accuracy decrease (%)")
    ax.legend(fontsize=8)
    ax.set_title(f"Mask and keep for larger k ({n_deep:,} deep neurons)")
    fig.tight_layout()
    return fig


def zero_shot_curve(t8: pd.DataFrame, paper8: pd.DataFrame, thresholds=range(4)):
    """Table 8 as a curve over M: this run's hidden-interpretable set, random sets of the same size
    and the paper's numbers; each point labelled with its set size."""
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    xs = list(thresholds)
    ours = t8[[f"M={m}" for m in xs]]
    ax.plot(xs, ours.loc["accuracy_decrease"], "o-", label="hidden-interpretable set")
    ax.plot(xs, ours.loc["random_decrease"], "s--", label="random set, same size")
    ax.plot(xs, paper8.loc["accuracy_decrease"], "^:", color="gray", label="paper (Llama-7B)")
    for x, n in zip(xs, ours.loc["number"]):
        ax.annotate(f"{int(n):,}", (x, ours.loc["accuracy_decrease"].iloc[x]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xticks(xs, [f"M={m}" for m in xs])
    ax.set_ylabel("accuracy decrease (%)")
    ax.legend(fontsize=7)
    ax.set_title("Zeroing hidden-interpretable shallow neurons (labels: set size)")
    fig.tight_layout()
    return fig


def pruning_bars(t11: pd.DataFrame, kept: dict, d_mlp: int):
    """Table 11 as bars, beside the number of neurons kept in each deep layer."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    t11.rename(index={"acc": "whole answer"}).T.plot.bar(ax=axes[0], rot=20)
    axes[0].set_ylabel("accuracy (%)")
    axes[0].set_title("Table 11 on this model")
    pd.Series({l: len(v) for l, v in kept.items()}).plot.bar(ax=axes[1], color="grey", rot=0)
    axes[1].set_xlabel("deep layer")
    axes[1].set_ylabel("neurons kept")
    axes[1].set_title(f"kept neurons per layer (of {d_mlp})")
    fig.tight_layout()
    return fig


def bias_by_k(t13: pd.DataFrame, prompt_sets, ks, random_label):
    """The total gender bias of each prompt set against the number of neurons zeroed: the top-k CNA
    neurons and k random ones (``random_label(k)`` names the random rows of ``t13``)."""
    fig, axes = plt.subplots(1, len(prompt_sets), figsize=(11, 3.2), sharey=True)
    for ax, pname in zip(axes, prompt_sets):
        orig = t13.loc["original", (pname, "total")]
        ax.plot([0] + ks, [orig] + [t13.loc[f"top-{k}", (pname, "total")] for k in ks], marker="o",
                label="top-k CNA neurons")
        ax.plot([0] + ks, [orig] + [t13.loc[random_label(k), (pname, "total")] for k in ks], marker="s", ls="--",
                label="k random neurons")
        ax.set_title(pname)
        ax.set_xlabel("neurons zeroed")
    axes[0].set_ylabel("total bias (nats)")
    axes[0].legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig
