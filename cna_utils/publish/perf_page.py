"""The book's performance page, written from the benchmark results (``make bench``).

``write_performance(bench_dir, out_dir)`` reads ``bench_dir/head_sweep.json`` and
``bench_dir/importance.json`` and writes ``out_dir/performance.md`` with a table per benchmark and
a figure of cost against problem size (``out_dir/performance_scaling.png``).
"""
from __future__ import annotations

import json
from pathlib import Path

__all__ = ["performance_markdown", "write_performance"]


def _load(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def _scaling_figure(sweep: dict, path: Path) -> bool:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sweep.get("scaling", [])
    full = max(x["layers"] for x in rows)
    by_cases = [r for r in rows if r["layers"] == full]
    few = min(r["cases"] for r in rows if r["layers"] < full) if any(r["layers"] < full for r in rows) else None
    by_layers = [r for r in rows if r["cases"] == few]
    if not rows:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, data, key, label in ((axes[0], by_cases, "cases", "cases (every head)"),
                                 (axes[1], by_layers, "layers", f"layers swept (9 heads each, {few} cases)")):
        data = sorted(data, key=lambda r: r[key])
        xs, ys = [r[key] for r in data], [r["seconds"] for r in data]
        ax.plot(xs, ys, "o-")
        if xs:
            ax.plot([0, xs[-1]], [0, ys[-1]], ls="--", color="gray", lw=0.8, label="proportional")
        ax.set_xlabel(label)
        ax.set_ylabel("seconds")
        ax.legend(fontsize=8)
    fig.suptitle("Batched head sweep: cost against problem size")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def performance_markdown(bench_dir, fig_name: str | None = None) -> str:
    bench_dir = Path(bench_dir)
    sweep, imp = _load(bench_dir / "head_sweep.json"), _load(bench_dir / "importance.json")
    atp = _load(bench_dir / "atp.json")
    out = ["# Performance", "",
           "How fast the library's two heavy computations are, against the straightforward ways of doing the "
           "same work, measured in one process on the same inputs with the same numbers out. The numbers "
           "below come from `make bench` (`bench/head_sweep.py`, `bench/importance.py`, `bench/atp.py`) on the machine "
           "named in each table; rerun it to measure yours.", ""]
    if sweep is None and imp is None and atp is None:
        return "\n".join(out + ["No benchmark results yet: run `make bench`.", ""])
    if sweep is not None:
        out += _sweep_section(sweep, fig_name)
    if imp:
        out += _importance_section(imp)
    if atp:
        out += _atp_section(atp)
    return "\n".join(out)


def _table_head(title: str, intro: str, columns: list[str]) -> list[str]:
    """A section's heading, its paragraph and the header of its table (markdown lines)."""
    return [f"## {title}", "", intro, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def _sweep_section(sweep: dict, fig_name: str | None) -> list[str]:
    """The batched head sweep against a hooked loop and the authors' copy-and-zero (``bench/head_sweep.py``)."""
    out = ["## Sweeping every attention head", "",
            f"Model {sweep['model']}, all {sweep['heads']} heads zeroed one at a time, {sweep['threads']} "
            "CPU threads. *batched*: `measure.sweep.head_sweep` (cached residual stream, the forward starts at the "
            "ablated layer, several heads per forward as rows of one batch, LM head at the last position "
            "only). *hooked*: one full forward per head with a hook (a TransformerLens/nnsight loop). "
            "*copy*: the authors' notebook (copy the model, zero the head's o_proj columns, full forward). "
            "Every contender gives the same answers and log-probabilities (checked to 1e-4).", "",
            "| size | batched (s) | hooked (s) | copy (s) | hooked / batched | copy / batched |",
            "|---|---|---|---|---|---|"]
    for name, r in sweep["sizes"].items():
        sec, sp = r["seconds"], r["speedup"]
        copy_s = f"{sec['copy']:.1f}" if "copy" in sec else "-"
        copy_x = f"{sp['copy/batched']:.0f}x" if "copy/batched" in sp else "-"
        out.append(f"| {name} | {sec['batched']:.1f} | {sec['hooked']:.1f} | {copy_s} | "
                   f"{sp['hooked/batched']:.1f}x | {copy_x} |")
    out.append("")
    if "matmul_peak_gflops" in sweep:
        peak = sweep["matmul_peak_gflops"]
        parts = []
        for name, r in sweep["sizes"].items():
            g = r.get("achieved_gflops", {})
            parts.append(f"{name}: " + ", ".join(f"{k} {v:.0f} GFLOP/s ({100 * v / peak:.0f}%)" for k, v in g.items()))
        why = []
        for name, r in sweep["sizes"].items():
            g, a = r.get("gflop", {}), r.get("achieved_gflops", {})
            if "batched" in g and "hooked" in g:
                why.append(f"{name}, the batched sweep does {100 * g['batched'] / g['hooked']:.0f}% of the hooked "
                           f"loop's FLOPs at {a['batched'] / a['hooked']:.1f}x its FLOP rate")
        out += [f"Achieved FLOP/s (matmuls and attention counted by torch's FlopCounterMode in an untimed run; fp32 "
                f"matmul peak of this machine {peak:.0f} GFLOP/s): " + "; ".join(parts) + ". For " +
                "; for ".join(why) + ". Less work: no layer below the ablated one is recomputed and the LM head "
                "runs only where an answer is scored. A faster rate: one prompt's heads become rows of one "
                "batch, where the hooked loop multiplies one short prompt at a time.", ""]
    if fig_name:
        out += [f"![Cost against problem size]({fig_name})", "",
                "The batched sweep's cost grows in proportion to the number of cases and of heads "
                "(dashed: a straight line through the origin and the largest size).", ""]
    return out


def _importance_section(imp: dict) -> list[str]:
    """The exact importance scores: series against log-sum-exp and the per-case way (``bench/importance.py``)."""
    intro = ("*series* (`measure.importance.importance_scores`, the default): each layer's FFN values projected to the "
             "vocabulary once for all cases; each score is the target's logit change minus the log of the "
             "softmax-weighted sum of exp(logit change), computed from the moments of the projection (matrix "
             "products shared by all cases) and stopped where a proven bound on the rest is below 1e-12 nats; "
             "scores whose bound is not met are computed by the definition. *lse* (`method=\"lse\"`): the same "
             "projection, then one log-sum-exp over the vocabulary per case and neuron. *per-case*: the "
             "authors' way (the projection recomputed per case and layer). *lse* and *per-case* are timed on "
             "a few layers (and cases) and scaled to all: every layer has the same shapes. *floor*: the "
             "log-sum-exp over the vocabulary that computing the definition needs for every case and neuron.")
    out = _table_head("Exact importance scores of every FFN neuron", intro, [
        "model", "cases", "neurons x vocab", "series (s)", "lse (s)", "per-case (s)", "lse floor (s)", "lse / series",
        "per-case / series", "series / floor", "by definition", "max difference (nats)"])
    for name, r in imp.items():
        sec, d = r["seconds"], r["max_abs_diff_nats"]
        out.append(f"| {name} | {r['cases']} | {r['layers'] * r['neurons']:,} x {r['vocab']:,} | "
                   f"{sec['series_all_layers']:.0f} | {sec['lse_all_layers_projected']:.0f} | "
                   f"{sec['per_case_all_projected']:.0f} | {sec['lse_floor_all_layers']:.0f} | "
                   f"{r['ratio_lse_over_series']:.1f}x | {r['ratio_per_case_over_series']:.1f}x | "
                   f"{r['ratio_series_over_lse_floor']:.2f}x | {100 * r['scored_by_definition']:.2f}% | "
                   f"{max(d.values()):.0e} |")
    out += ["", "All on " + ", ".join(f"{r['threads']} CPU threads (fp32 matmul peak "
                                      f"{r['matmul_peak_gflops']:.0f} GFLOP/s) for {n}" for n, r in imp.items())
            + ". The series leaves the log-sum-exp floor behind; part of what remains is the projection "
            "itself (its FLOPs at the measured peak would take " + ", ".join(
                f"{100 * r['projection_share_of_series']:.0f}% of the series time for {n}" for n, r in imp.items())
            + "). Top-99 neurons per case, series against lse: " + "; ".join(
                _top99_agreement(n, r) for n, r in imp.items()) + ".", ""]
    return out


def _atp_section(atp: dict) -> list[str]:
    """The attribution-patching screen against the exact sweep (``bench/atp.py``)."""
    intro = ("`measure.attribution.attribution_patching` estimates every head's ablation effect on every case from one forward "
             "and two backward passes per batch (*atp*); *atp\\** adds GradDrop (one more forward and backward per "
             "later layer). Chapter 1 confirms exactly the heads the *atp* estimate cannot rule out "
             "(`paper.heads.candidate_heads`: each group's top heads by estimated log-prob and accuracy drop, and every "
             "head estimated beyond 2 points less a margin). Recall: of the heads whose *exact* accuracy drop over all "
             "cases is at least 2 (10) points, the share the screen confirms (with a head sample, among the sampled "
             "heads). Exact every-head seconds are measured, or scaled from the sample by the layers each head's "
             "forward runs.")
    out = _table_head("Screening every head with attribution patching", intro, [
        "model", "cases", "heads exact", "Spearman atp / atp* (log-prob drop)", "confirmed", "recall >= 2",
        "recall >= 10", "largest unconfirmed drop", "exact (s)", "atp (s)", "atp* (s)", "confirm (s)", "exact / atp",
        "exact / (atp + confirm)"])
    pct = lambda v: "-" if v is None else f"{100 * v:.0f}%"
    for name, r in atp.items():
        sc, sec, c = r["screen"]["all cases"], r["seconds"], r["correlation"]
        big = lambda t: f"{pct(sc[f'recall_ge_{t}_points'])} of {sc[f'heads_exact_drop_ge_{t}_points']}"
        miss, miss_head = sc["largest_exact_drop_not_confirmed_points"], sc["largest_exact_drop_not_confirmed_head"]
        miss_text = "-" if miss is None else f"{miss:.1f} ({miss_head})"
        star_rho = f"{c['atp*']['spearman_logprob_drop']:.2f}" if "atp*" in c else "-"
        star_s = f"{sec['atp*']:.0f}" if "atp*" in sec else "-"
        out.append(f"| {r['model']} | {r['cases']} | {r['heads_exact']} of {r['heads']} | "
                   f"{c['atp']['spearman_logprob_drop']:.2f} / {star_rho} | "
                   f"{r['heads_confirmed']} | {big(2)} | {big(10)} | "
                   f"{miss_text} | "
                   f"{sec['exact_every_head']:.0f} | {sec['atp']:.0f} | {star_s} | {sec['confirm']:.0f} | "
                   f"{sec['exact_every_head'] / sec['atp']:.0f}x | "
                   f"{sec['exact_every_head'] / (sec['atp'] + sec['confirm']):.1f}x |")
    out.append("")
    for name, r in atp.items():
        op = r["screen"].get("any operation")
        if op:
            ten = op["recall_ge_10_points"]
            out.append(f"In single operations ({r['model']}, {r['cases'] // 4} cases each): "
                       f"{op['heads_exact_drop_ge_10_points']} heads cost 10 points or more, the screen confirms "
                       f"{'-' if ten is None else f'{100 * ten:.0f}%'} of them; the largest drop it leaves "
                       f"unconfirmed is {op['largest_exact_drop_not_confirmed_points']:.1f} points "
                       f"({op['largest_exact_drop_not_confirmed_head']}).")
    out.append("")
    return out


def _top99_agreement(name: str, r: dict) -> str:
    n = r["top99_cases_differing"]
    if n == 0:
        return f"{name}: the same in all {r['cases']} cases"
    why = ("only by neurons that tie with the 99th score within twice the largest difference"
           if r["top99_differences_are_ties"] else "by neurons that do not tie with the 99th score")
    rest = "the other differs" if n == 1 else "the others differ"
    return f"{name}: the same in {r['cases'] - n} of {r['cases']} cases; {rest} {why}"


def write_performance(bench_dir, out_dir) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sweep = _load(Path(bench_dir) / "head_sweep.json")
    fig = "performance_scaling.png" if sweep is not None and _scaling_figure(sweep, out_dir / "performance_scaling.png") else None
    path = out_dir / "performance.md"
    path.write_text(performance_markdown(bench_dir, fig))
    return path
