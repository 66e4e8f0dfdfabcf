"""Verdicts: what each chapter says replicates, and the book's replication scoreboard built from them.

Usage (in a chapter)::

    verdicts = show_verdicts(measures, "02_cna")     # judge the claims of this results file, show their table
    ch.save("02_cna", dict(..., measures=as_dicts(measures), verdicts=verdicts))

``python -m cna_utils.publish.scoreboard book/results book/_generated/scoreboard.md`` (run by ``cna_utils.publish.book``)
writes the scoreboard page: every table and figure of the paper, each of its claims with the paper's
number, this run's value with its 95% interval and n, the rule, the chapter it comes from and a
verdict -- or "not run" where no chapter computed it. Every verdict is ``claims.verdicts`` applied to
the measures a results file records, so a second model's run of chapters 1-4 is judged against
GPT-J's numbers (Tables 18-21) from the same measures its own page judges against Llama-7B's.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from cna_utils.paper import claims as cl
from cna_utils.paper.measures import as_dicts

__all__ = ["verdict_markdown", "show_verdicts", "PAPER_ITEMS", "load_all", "item_rows", "totals", "claim_totals",
           "scoreboard_markdown", "write_scoreboard"]

VERDICTS = cl.VERDICTS
# Every table and figure of the paper, in the paper's order of appearance (claims.yaml lists where each is computed).
PAPER_ITEMS = [k for k in cl.items() if k != "beyond"] + ["beyond"]


def _paper_cell(r: dict) -> str:
    return r["paper_text"]


def verdict_markdown(records: list[dict]) -> str:
    """A chapter's "what replicates" table: claim, the paper's value, this run's value [95% interval]
    (n), the verdict (with why, when inconclusive)."""
    lines = ["| item | claim | paper | this run: value [95% interval] (n) | verdict |", "|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {_label(r['item'])} | {r['claim']} | {_paper_cell(r)} | {r['this_run']} | {_verdict_cell(r)} |")
    return "\n".join(lines)


def _verdict_cell(r: dict) -> str:
    v = f"**{r['verdict']}**"
    if r["verdict"] == "inconclusive":
        v += f" ({r['why']}" + (f"; about n = {r['n_needed']:,} would decide it" if r.get("n_needed") else "") + ")"
    return v


def show_verdicts(measures: dict, results_name: str) -> list[dict]:
    """Judge every claim of ``results_name`` on ``measures`` ({name: Measure}), display the table
    (in a notebook) and return the verdict records for the results file."""
    from IPython.display import Markdown, display
    records = cl.verdicts({"measures": as_dicts(measures)}, results_name)
    display(Markdown(verdict_markdown(records)))
    return records


def _label(key: str) -> str:
    return "beyond the paper" if key == "beyond" else key.replace("_", " ").capitalize()


def load_all(results_dir) -> dict:
    """Every results file of a book build: ``{"02_cna": {...}, "second/02_cna": {...}, ...}``."""
    results_dir = Path(results_dir)
    loaded = {p.stem: json.loads(p.read_text()) for p in sorted(results_dir.glob("[0-9][0-9]_*.json"))}
    loaded.update({f"second/{p.stem}": json.loads(p.read_text())
                   for p in sorted((results_dir / "second").glob("[0-9][0-9]_*.json"))})
    return loaded


def judged(loaded: dict) -> dict:
    """{results name: verdict records}: ``claims.verdicts`` on each results file's measures (None where
    the file records no measures)."""
    return {name: cl.verdicts(res, name) if "measures" in res else None for name, res in loaded.items()}


def item_rows(loaded: dict) -> list[dict]:
    """One row per paper item: its verdict (combined over its claims), the claim records, the chapter and its section."""
    per_file = judged(loaded)
    out = []
    for key in PAPER_ITEMS:
        it = cl.items()[key]
        source = it["results"]
        res = loaded.get(source)
        recs = [r for r in (per_file.get(source) or []) if r["item"] == key]
        chapter = source.split("/")[-1] if not source.startswith("second/") else source
        note = ("" if recs else "no measures in the results file (run the chapter again)" if res is not None
                else "chapter not run")
        out.append(dict(key=key, label=_label(key), what=it["what"], chapter=chapter, ran=res is not None,
                        anchor=f"#{it['section']}" if it.get("section") else "", records=recs, note=note,
                        model=(res or {}).get("model", "?"), paper_model=it.get("paper_model", "Llama-7B"),
                        verdict=cl.combine(recs) if recs else "not run"))
    return out


def totals(rows: list[dict]) -> str:
    """Item verdicts counted."""
    counts = {v: 0 for v in VERDICTS + ("not run",)}
    for r in rows:
        counts[r["verdict"]] += 1
    return ", ".join(f"{v}: {n}" for v, n in counts.items() if n or v != "not run")


def claim_totals(rows: list[dict]) -> str:
    """Claim verdicts counted."""
    counts = {v: 0 for v in VERDICTS}
    for r in rows:
        for c in r["records"]:
            counts[c["verdict"]] += 1
    return ", ".join(f"{v}: {n}" for v, n in counts.items())


def scoreboard_markdown(results_dir, figures: dict | None = None) -> str:
    """The scoreboard page (MyST markdown) from the chapters' results files (``figures``: the forest
    figures' file names by part of the book, shown at the top)."""
    loaded = load_all(results_dir)
    main = [r for k, r in loaded.items() if not k.startswith("second/")]
    second_models = sorted({r.get("model", "?") for k, r in loaded.items() if k.startswith("second/")})
    profiles = sorted({r.get("profile", "?") for r in main})
    models = sorted({r.get("model", "?") for r in main})
    rows = item_rows(loaded)
    n_claims = sum(len(r["records"]) for r in rows)
    out = ["# Replication scoreboard", "",
           "Every table and figure of the paper, each claim it makes with the paper's number, this book's number for "
           f"{', '.join(models) or 'the default model'} (profile {', '.join(profiles) or 'none'}) with its 95% "
           "interval and n, and a verdict. The page is written from the results files the chapters save when they run; "
           "a chapter that has not run shows \"not run\". Tables 18-21 are the paper's second model (GPT-J); here they "
           f"are chapters 1-4 run again on {', '.join(second_models) or 'a second model (not run in this build)'}, "
           "judged against GPT-J's numbers.", "",
           "**How a number becomes a verdict.** Each claim reads one measured number. Proportions carry a Wilson "
           "interval; means, drops and differences between conditions on the same cases a paired bootstrap over cases "
           "(2,000 resamples, seeded); rankings the bootstrap of the whole choice (the top head is chosen again in "
           "every resample). A rule gives the thresholds (written below each claim): the verdict is *replicates*, "
           "*partly* or *does not* when the whole interval lies on one side, and *inconclusive* when it straddles a "
           "threshold or rests on fewer cases than the rule's smallest n, with about how many cases would decide it. "
           "Every rule replicates on the paper's own numbers and fails an input where the head or neurons change "
           "nothing (`python -m cna_utils.paper.claims --check-paper`, run by the tests).", "",
           f"**Totals:** items: {totals(rows)}; claims ({n_claims}): {claim_totals(rows)}.", ""]
    out += _glance(loaded, figures or {})
    for r in rows:
        link = (f"[{r['chapter']}](../chapters/{r['chapter']}.ipynb{r['anchor']})" if r["ran"] else r["chapter"])
        out += [f"## {r['label']}: {r['what']}", "",
                f"Verdict: **{r['verdict']}**; computed in {link}"
                + (f"; the paper's numbers are {r['paper_model']}'s, this run's {r['model']}'s" if r["paper_model"] != "Llama-7B"
                   else "") + ".", ""]
        if not r["records"]:
            out += [f"*{r['note']}*", ""]
            continue
        out += ["```{div} full-width", "", "| claim | paper | this run: value [95% interval] (n) | verdict |",
                "|---|---|---|---|"]
        for c in r["records"]:
            out.append(f"| {c['claim']}<br><small>rule `{c['rule_id']}`: {c['rule']}</small> | {c['paper_text']} | "
                       f"{c['this_run']} | {_verdict_cell(c)} |")
        out += ["", "```", ""]
    return "\n".join(out)


def _glance(loaded: dict, figures: dict) -> list[str]:
    """The at-a-glance section: one forest figure per part of the book (``figures``: {part: file name})."""
    if not figures:
        return []
    out = ["## At a glance", "",
           "Every judged claim on the scale of its own rule: 0 is the rule's *replicates* threshold and -1 its "
           "*partly* threshold, so right of 0 replicates, between -1 and 0 partly, left of -1 does not, whatever "
           "the claim's unit. A line is this run's 95% interval, a dot its value, coloured by the verdict (grey: "
           "inconclusive, the interval straddles a threshold or rests on too few cases); the diamond is the "
           "paper's own number on the same scale. A two-sided rule (a band) counts from 0 at the band's edge to 1 "
           "at its middle. The sections below give each claim's text, numbers and rule.", ""]
    for part, name in figures.items():
        out += [f"```{{figure}} {name}", f":alt: Forest plot of the {part}'s claims on the verdict scale",
                ":width: 100%", "", f"The {part}: {_count(loaded, part)}.", "```", ""]
    return out


def _count(loaded: dict, part: str) -> str:
    from cna_utils.publish.forest import forest_rows
    rows = forest_rows(loaded)
    rows = rows[rows.part == part]
    return f"{len(rows)} claims; " + ", ".join(f"{v} {int((rows.verdict == v).sum())}" for v in VERDICTS)


def write_scoreboard(results_dir, path) -> Path:
    """The scoreboard page at ``path``, with its forest figures (PNG) beside it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from cna_utils.publish.forest import forest_figure, forest_rows
    path = Path(path)
    rows = forest_rows(load_all(results_dir))
    figures = {}
    for part in dict.fromkeys(rows.part):
        name = f"forest-{part.replace(' ', '-')}.png"
        fig = forest_figure(rows[rows.part == part], f"The {part}: every claim on its rule's scale")
        fig.savefig(path.parent / name, dpi=120)
        plt.close(fig)
        figures[part] = name
    path.write_text(scoreboard_markdown(results_dir, figures))
    return path


if __name__ == "__main__":
    print(write_scoreboard(sys.argv[1], sys.argv[2]))
