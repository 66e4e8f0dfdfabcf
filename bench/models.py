"""Which model can do the arithmetic: accuracy of each built-in model per operation, digit count,
template and form, and what one forward costs on this machine.

    python bench/models.py                              # every built-in model, 25 operand pairs per op and digit count
    python bench/models.py --model qwen2.5-coder-1.5b --pairs 50

For each (op, digits) the same operand pairs are written in Table 14's four templates and in
template 5 (the authors' code prompt, "3+5="), with numerals, with number words and word answers,
and with number words and numeral answers. First-token and whole-answer accuracy, teacher-forced
(``cna_utils.accuracy``). A model already in the results file with the same settings is skipped.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from cna_utils.data.arithmetic import arithmetic_dataset
from cna_utils.measure.evaluate import accuracy
from cna_utils.model.families import spec
from cna_utils.model.loading import load_model
from cna_utils.model.weights import provenance, WEIGHTS

OUT = "bench/results/models.json"


def load(name: str):
    """The model, its tokenizer and the seconds its load took."""
    t = time.perf_counter()
    model, tok = load_model(name)
    return model, tok, time.perf_counter() - t


def timing(model, tok, load_s: float) -> dict:
    """Load time and one forward of 100 two-digit prompts ("a + b = "), the cost unit of every sweep."""
    probe = arithmetic_dataset(digits=(2,), templates=[4], words=False, n=25, tokenizer=tok)
    accuracy(model, tok, probe[:8])
    t = time.perf_counter()
    accuracy(model, tok, probe, batch_size=100)
    return {"load_s": round(load_s, 1), "forward_100_prompts_s": round(time.perf_counter() - t, 2),
            "threads": torch.get_num_threads()}


def survey(name: str, pairs: int, digits=(1, 2)) -> dict:
    model, tok, load_s = load(name)
    kw = dict(digits=digits, templates=[1, 2, 3, 4, 5], n=pairs, tokenizer=tok)
    cases = arithmetic_dataset(words=True, **kw)                                   # numerals; words -> words
    cases += [c for c in arithmetic_dataset(words=True, answers="number", **kw) if c.form == "word"]
    t = time.perf_counter()
    acc = accuracy(model, tok, cases)
    acc_s = time.perf_counter() - t
    acc["answer_form"] = [c.answer_form for c in cases]
    rows = (acc.groupby(["op", "digits", "template", "form", "answer_form"])
            .agg(n=("first_correct", "size"), first_token=("first_correct", "mean"),
                 whole_answer=("answer_correct", "mean")).reset_index())
    s = spec(model)
    return {"weights": provenance(name), "pairs": pairs, "digits": list(digits), "sentences": len(cases),
            "accuracy_s": round(acc_s, 1), **timing(model, tok, load_s),
            "shape": {"layers": s.n_layers, "heads": s.n_heads, "kv_heads": s.n_kv_heads, "d_model": s.d_model,
                      "d_mlp": s.d_mlp, "vocab": s.vocab_size},
            "rows": rows.round(4).to_dict(orient="records")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", choices=list(WEIGHTS), help="repeatable; default: every built-in")
    ap.add_argument("--pairs", type=int, default=25, help="operand pairs per op and digit count")
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--timing", action="store_true", help="only measure load and forward time again")
    args = ap.parse_args()
    out = Path(args.out)
    res = json.loads(out.read_text()) if out.exists() else {}
    for name in args.model or list(WEIGHTS):
        if args.timing and name in res:
            res[name].update(timing(*load(name)))
            out.write_text(json.dumps(res, indent=1))
            print(name, {k: res[name][k] for k in ("load_s", "forward_100_prompts_s")}, flush=True)
            continue
        if res.get(name, {}).get("pairs") == args.pairs:
            print(f"{name}: in {out} already")
            continue
        res[name] = survey(name, args.pairs)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1))
        r = res[name]
        print(f"{name}: {r['sentences']} sentences in {r['accuracy_s']} s, load {r['load_s']} s, "
              f"100 prompts {r['forward_100_prompts_s']} s", flush=True)


if __name__ == "__main__":
    main()
