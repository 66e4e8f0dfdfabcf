"""Verdicts: what each chapter says replicates, and the book's replication scoreboard built from them.

Usage (in a chapter)::

    rows = [claim("table_5", "zeroing the top-99 neurons removes the answer", "58.8%", ok=False, partly=True), ...]
    display(Markdown(verdict_markdown(rows)))          # the chapter's "what replicates" table
    save_results(..., verdicts=rows)                    # the scoreboard reads them from the results JSON

``python -m cna_utils.publish.scoreboard book/results book/_generated/scoreboard.md`` (run by ``cna_utils.publish.book``)
writes the scoreboard page: every table and figure of the paper, the paper's number, this run's,
the chapter it comes from, and a verdict -- or "not run" where no chapter computed it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..analysis import STUDIES, study_results_name
from ..paper import paper_table

__all__ = ["claim", "verdict_markdown", "PAPER_ITEMS", "load_all", "item_rows", "totals", "scoreboard_markdown",
           "write_scoreboard"]

VERDICTS = ("replicates", "partly", "does not")


def claim(item: str, text: str, this_run: str, ok: bool, partly: bool = False, paper: str = "") -> dict:
    """One checked claim of the paper: ``item`` is the paper's table or figure ("table_5"),
    ``text`` the claim with the paper's number, ``this_run`` what this run measured."""
    return dict(item=item, claim=text, paper=paper, this_run=this_run,
                verdict="replicates" if ok else "partly" if partly else "does not")


def verdict_markdown(rows: list[dict]) -> str:
    """The chapter's "what replicates" table."""
    lines = ["| paper's claim (Llama-7B) | this run | replicates? |", "|---|---|---|"]
    lines += [f"| {r['claim']} | {r['this_run']} | {r['verdict']} |" for r in rows]
    return "\n".join(lines)


# Every table and figure of the paper: (key, what it shows, chapter notebook that computes it or None).
PAPER_ITEMS = [
    ("table_1", "top-5 heads, accuracy on the 2-digit set", "01_arithmetic_heads"),
    ("table_2", "top head per operation on 1/2/3 digits", "01_arithmetic_heads"),
    ("table_3", "memorize vs change-one digits", "01_arithmetic_heads"),
    ("table_4", "top CNA neurons of \"3+5=\"", "02_cna"),
    ("table_5", "mask / keep / coef over 1D+ and 1D-", "02_cna"),
    ("table_6", "zeroing the lowest top neuron (PE-DAG)", "03_prediction_enhancing_dag"),
    ("table_7", "hidden-interpretable vectors of the case", "04_hidden_interpretable_neurons"),
    ("table_8", "zero-shot hidden-interpretable neurons", "04_hidden_interpretable_neurons"),
    ("figure_2", "accuracy of one LoRA model per layer", "05_lora"),
    ("table_9", "coefficient scores in LoRA models", "05_lora"),
    ("table_10", "coefficient increase by LoRA layer depth", "05_lora"),
    ("table_11", "pruning for arithmetic", "06_pruning"),
    ("table_12", "gender-bias neurons", "07_gender_bias"),
    ("table_13", "bias before and after editing", "07_gender_bias"),
    ("table_15", "the division head on 1D/ (Table 5 layout)", study_results_name("02_cna", "/")),
    ("table_16", "the division head on 1D/ (Table 6 layout)", study_results_name("03_prediction_enhancing_dag", "/")),
    ("table_17", "the division head on 1D/ (Table 8 layout)", study_results_name("04_hidden_interpretable_neurons", "/")),
    ("table_18", "second model: accuracy when ablating heads (Table 1 layout)", "second/01_arithmetic_heads"),
    ("table_19", "second model: mask / keep / coef (Table 5 layout)", "second/02_cna"),
    ("table_20", "second model: zeroing the lowest top neuron (Table 6 layout)", "second/03_prediction_enhancing_dag"),
    ("table_21", "second model: zero-shot search (Table 8 layout)", "second/04_hidden_interpretable_neurons"),
    ("table_22", "gender-bias prompts", "07_gender_bias"),
    ("table_23", "professions per gender", "07_gender_bias"),
    ("table_24", "top-5 heads per op, 1D/2D/3D (+)", "01_arithmetic_heads"),
    ("table_25", "top-5 heads per op, 1D/2D/3D (-)", "01_arithmetic_heads"),
    ("table_26", "top-5 heads per op, 1D/2D/3D (*)", "01_arithmetic_heads"),
    ("table_27", "top-5 heads per op, 1D/2D/3D (/)", "01_arithmetic_heads"),
]
# The chapter section each item is computed in (MyST heading anchors).
SECTIONS = {
    "table_1": "table-1-the-five-most-important-heads",
    "table_2": "table-2-the-top-head-of-each-operation-on-1-2-and-3-digits",
    "table_3": "table-3-memorize-vs-change-one-digits",
    "table_4": "table-4-the-top-cna-neurons-of-the-case",
    "table_5": "table-5-mask-keep-coef",
    "table_6": "table-6-zeroing-the-lowest-top-neuron-over-all-cases",
    "table_7": "table-7-the-shallow-neurons-that-feed-the-root",
    "table_8": "table-8-the-zero-shot-search",
    "figure_2": "figure-2-accuracy-of-a-lora-model-per-layer",
    "table_9": "table-9-the-top-neurons-of-the-case-in-each-lora-model",
    "table_10": "table-10-coefficient-increase-of-the-top-k-neurons-by-lora-layer-depth",
    "table_11": "table-11-fine-tune-lora-on-the-pruned-models",
    "table_12": "table-12-cna-between-the-woman-and-the-man-prompt",
    "table_13": "table-13-zero-the-top-k-neurons",
    "table_22": "table-22-the-prompts-and-the-bias-before-any-edit",
    "table_23": "table-23-which-professions-does-this-model-tie-to-a-gender",
    "table_24": "tables-24-27-the-top-5-heads-per-operation-and-digit-count",
    "table_25": "tables-24-27-the-top-5-heads-per-operation-and-digit-count",
    "table_26": "tables-24-27-the-top-5-heads-per-operation-and-digit-count",
    "table_27": "tables-24-27-the-top-5-heads-per-operation-and-digit-count",
}
# The division study's tables sit in the same sections as the tables they repeat (Table 15 as Table 5).
SECTIONS.update({item: SECTIONS[key] for key, item in STUDIES["/"]["items"].items()})
# The paper's second model (GPT-J, Appendix C) repeats Tables 1, 5, 6 and 8 as Tables 18-21; this book's
# second model runs chapters 1-4 again, and its verdicts on those claims fill these rows.
SECOND_SOURCE = {"table_18": "table_1", "table_19": "table_5", "table_20": "table_6", "table_21": "table_8"}
SECTIONS.update({item: SECTIONS[key] for item, key in SECOND_SOURCE.items()})


def second_model_paper(key: str) -> str:
    """The paper's GPT-J numbers for one of Tables 18-21, read from paper_tables.yaml."""
    t = paper_table(key)
    rows, cols = t["rows"], t["columns"]
    if key == "table_18":
        i = min(range(1, len(cols)), key=lambda j: rows["all"][j])
        return f"GPT-J: zeroing head {cols[i]} takes accuracy from {rows['all'][0]}% to {rows['all'][i]}%"
    if key == "table_21":
        return "GPT-J: accuracy decrease " + ", ".join(f"{c} {v}%" for c, v in zip(cols, rows["accuracy_decrease"])
                                                        if v is not None)
    return "GPT-J: top-99 " + ", ".join(f"{name} {vals[0]}%" for name, vals in rows.items())


def _combined(verdicts: list[str]) -> str:
    if all(v == "replicates" for v in verdicts):
        return "replicates"
    if all(v == "does not" for v in verdicts):
        return "does not"
    return "partly"


def load_all(results_dir) -> dict:
    """Every results file of a book build: ``{"02_cna": {...}, "second/02_cna": {...}, ...}``."""
    results_dir = Path(results_dir)
    loaded = {p.stem: json.loads(p.read_text()) for p in sorted(results_dir.glob("[0-9][0-9]_*.json"))}
    loaded.update({f"second/{p.stem}": json.loads(p.read_text())
                   for p in sorted((results_dir / "second").glob("[0-9][0-9]_*.json"))})
    return loaded


def item_rows(loaded: dict) -> list[dict]:
    """One row per paper item: its verdict (combined over the chapter's claims), the claims with the
    paper's numbers, this run's numbers, the chapter and its section."""
    out = []
    for key, what, chapter in PAPER_ITEMS:
        res = loaded.get(chapter) if chapter else None
        rows = [r for r in (res or {}).get("verdicts", []) if r["item"] == SECOND_SOURCE.get(key, key)]
        row = dict(key=key, label=key.replace("_", " ").capitalize(), what=what, chapter=chapter, ran=res is not None,
                   anchor=f"#{SECTIONS[key]}" if key in SECTIONS else "", claims=[r["claim"] for r in rows],
                   this_run=[r["this_run"] for r in rows],
                   verdict=_combined([r["verdict"] for r in rows]) if rows else "not run")
        if rows and key in SECOND_SOURCE:
            row["claims"] = [second_model_paper(key), "the Llama-7B claims: " + row["claims"][0]] + row["claims"][1:]
            row["this_run"][0] = f"{res.get('model', '?')}: {row['this_run'][0]}"
        elif not rows:
            row["this_run"] = ["no verdict recorded by the chapter" if res is not None else "chapter not run"]
        out.append(row)
    return out


def totals(rows: list[dict]) -> str:
    counts = {v: 0 for v in VERDICTS + ("not run",)}
    for r in rows:
        counts[r["verdict"]] += 1
    return ", ".join(f"{v}: {n}" for v, n in counts.items())


def scoreboard_markdown(results_dir) -> str:
    """The scoreboard page (MyST markdown) from the chapters' results files."""
    loaded = load_all(results_dir)
    main = [r for k, r in loaded.items() if not k.startswith("second/")]
    second_models = sorted({r.get("model", "?") for k, r in loaded.items() if k.startswith("second/")})
    profiles = sorted({r.get("profile", "?") for r in main})
    models = sorted({r.get("model", "?") for r in main})
    out = ["# Replication scoreboard", "",
           "Every table and figure of the paper, with the paper's Llama-7B claim, this book's number for "
           f"{', '.join(models) or 'the default model'} (profile {', '.join(profiles) or 'none'}), the chapter "
           "it comes from and a verdict. The page is written from the results files the chapters save "
           "when they run; a chapter that has not run shows \"not run\". Tables 18-21 are the paper's second "
           "model (GPT-J); here they are chapters 1-4 run again on "
           f"{', '.join(second_models) or 'a second model (not run in this build)'}, with the verdicts of those "
           "chapters' Table 1, 5, 6 and 8 claims and GPT-J's numbers beside them.", "",
           "| item | what | paper's claim | this run | verdict | chapter |", "|---|---|---|---|---|---|"]
    rows = item_rows(loaded)
    for r in rows:
        chapter = r["chapter"]
        link = f"[{chapter}](../chapters/{chapter}.ipynb{r['anchor']})" if r["ran"] else (chapter or "-")
        out.append(f"| {r['label']} | {r['what']} | {'; '.join(r['claims']) or '-'} | {'; '.join(r['this_run'])} "
                   f"| **{r['verdict']}** | {link} |")
    out += ["", "**Totals:** " + totals(rows), ""]
    return "\n".join(out)


def write_scoreboard(results_dir, path) -> Path:
    path = Path(path)
    path.write_text(scoreboard_markdown(results_dir))
    return path


if __name__ == "__main__":
    print(write_scoreboard(sys.argv[1], sys.argv[2]))
