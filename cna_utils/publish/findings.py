"""The "what we found" table that opens the README and the intro, written from the committed results of
the last full run (``results/<model>/<profile>/``, a copy of a build's ``book/results/``).

    python -m cna_utils.publish.findings --save book/results      # copy a build's results under results/<model>/<profile>/
    python -m cna_utils.publish.findings                          # rewrite the tables in README.md and book/intro.md
    python -m cna_utils.publish.findings --check                  # exit 1 when they differ from the committed results

The table sits between two marker lines in each file; a test runs ``--check``.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from cna_utils.paper import claims as cl
from cna_utils.store.results import save_results
from cna_utils.publish.scoreboard import claim_totals, item_rows, load_all, totals

__all__ = ["RESULTS", "GLANCE", "findings_markdown", "glance_figure", "save_run", "update", "main"]

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "results" / "qwen2.5-coder-0.5b" / "book"       # the last full `make book` run
PAGES = (ROOT / "README.md", ROOT / "book" / "intro.md")
BEGIN = "<!-- findings: written by `python -m cna_utils.publish.findings` from the committed results; do not edit -->"
END = "<!-- findings end -->"


def _run_line(loaded: dict) -> str:
    main = [r for k, r in loaded.items() if not k.startswith("second/")]
    first = main[0]["run"]
    w = first.get("weights") or {}
    minutes = sum(r["run"]["seconds"] for r in loaded.values()) / 60
    commits = sorted({str(r["run"].get("code_commit") or "?")[:7] for r in loaded.values()})
    second = sorted({r["run"]["model"] for k, r in loaded.items() if k.startswith("second/")})
    threads = first["torch_threads"]
    times = ", ".join(f"{_short(k)} {r['run']['seconds'] / 60:.1f}"
                      + (f" ({r['run']['torch_threads']} thread{'s' * (r['run']['torch_threads'] != 1)})"
                         if r["run"]["torch_threads"] != threads else "") for k, r in loaded.items())
    return (f"Run: {first['model']}" + (f" ({w['quantization'].split(' (')[0]}, SHA-256 {w['sha256'][:12]}...)" if w else "")
            + f", profile `{first['profile']}`" + (f", second model {', '.join(second)}" if second else "")
            + f"; code {', '.join(commits)}; {max(r['run']['date'] for r in loaded.values())[:10]}. "
            f"Minutes per chapter run on {first['torch_threads']} CPU threads (chN/: the division study, C.N: the "
            f"second model): {times}; {minutes:.0f} min in all.")


def _short(name: str) -> str:
    """"05_lora" -> "ch5", "02_cna_division" -> "ch2/" (the division study), "second/01_arithmetic_heads" -> "C.1"."""
    if name.startswith("second/"):
        return f"C.{int(name[7:9])}"
    return f"ch{int(name[:2])}" + ("/" if name.endswith("_division") else "")


def findings_markdown(results_dir=RESULTS) -> str:
    """One row per claim this run checked: the item, the claim, the paper's value, this run's value with
    its 95% interval and n, the verdict; then the totals over items and over claims."""
    loaded = load_all(results_dir)
    if not loaded:
        raise FileNotFoundError(f"no results under {results_dir}: run `make book`, then "
                                f"`python -m cna_utils.publish.findings --save book/results`")
    rows = item_rows(loaded)
    out = [_run_line(loaded), "", "| paper item | claim | paper | this run: value [95% interval] (n) | verdict |",
           "|---|---|---|---|---|"]
    for r in rows:
        if not r["records"]:
            out.append(f"| {r['label']} | {r['what']} | - | {r['note']} | {r['verdict']} |")
        for c in r["records"]:
            out.append(f"| {r['label']} | {c['claim']} | {c['paper_text']} | {c['this_run']} | {c['verdict']} |")
    n_claims = sum(len(r["records"]) for r in rows)
    out += ["", f"Totals over the paper's {len(rows) - 1} tables and figures and the book's own checks: items: "
            f"{totals(rows)}; claims ({n_claims}): {claim_totals(rows)}. The rule behind every verdict is on the "
            "replication scoreboard page of the book."]
    return "\n".join(out)


def save_run(build_results, dest_root=ROOT / "results") -> Path:
    """Copy a build's results files (not its caches) to ``results/<model>/<profile>/``, each file's
    verdicts judged again by the current rules on its recorded measures."""
    build_results = Path(build_results)
    loaded = load_all(build_results)
    main = [r for k, r in loaded.items() if not k.startswith("second/")]
    if not main:
        raise FileNotFoundError(f"no results files under {build_results}")
    dest = Path(dest_root) / main[0]["run"]["model"] / main[0]["run"]["profile"]
    for name, res in loaded.items():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        if "measures" in res:                       # the verdicts of the rules as they are now, on the same measures
            save_results(name, dict(res, verdicts=cl.verdicts(res, name)), dest)
        else:
            shutil.copy(build_results / f"{name}.json", dest / f"{name}.json")
    return dest


def _replace_block(text: str, table: str, path: Path) -> str:
    if BEGIN not in text or END not in text:
        raise ValueError(f"{path} has no findings block: add the lines {BEGIN!r} and {END!r} where the table goes")
    head, rest = text.split(BEGIN, 1)
    return head + BEGIN + "\n" + table + "\n" + END + rest.split(END, 1)[1]


GLANCE = "at-a-glance.png"      # the README's figure, beside the results it is drawn from


def glance_figure(results_dir=RESULTS) -> Path:
    """Draw the main model's forest figure (``publish.forest``) into ``results_dir/at-a-glance.png``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from cna_utils.publish.forest import forest_figure, forest_rows
    from cna_utils.publish.scoreboard import load_all
    rows = forest_rows(load_all(results_dir))
    fig = forest_figure(rows[rows.part == "main model"], "Every claim on its rule's scale (main model; the "
                        "replication scoreboard has the division study and the second model)")
    path = Path(results_dir) / GLANCE
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def update(results_dir=RESULTS, pages=PAGES, check: bool = False) -> list[Path]:
    """Rewrite the findings block of each page and draw the README's figure (``check``: only list the
    pages whose block differs)."""
    table = findings_markdown(results_dir)
    stale = []
    if not check:
        glance_figure(results_dir)
    for path in pages:
        text = Path(path).read_text()
        new = _replace_block(text, table, Path(path))
        if new != text:
            stale.append(Path(path))
            if not check:
                Path(path).write_text(new)
    return stale


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 when a page's table is stale")
    ap.add_argument("--save", metavar="BUILD_RESULTS", help="first copy a build's results (e.g. book/results)")
    ap.add_argument("--results", default=None, help=f"committed results to read (default {RESULTS.relative_to(ROOT)})")
    args = ap.parse_args(argv)
    results = Path(args.results) if args.results else RESULTS
    if args.save:
        results = save_run(args.save)
        print(f"results copied to {results}")
    stale = update(results, check=args.check)
    for path in stale:
        print(f"{path}: {'differs from' if args.check else 'rewritten from'} {results}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
