"""The paper's claims as data, and the one function that turns a chapter's measures into verdicts.

Usage (the last cell of a chapter)::

    results["measures"] = {"mask_top99": stats.proportion(flipped).to_dict(), ...}
    results["verdicts"] = verdicts(results, "02_cna")         # one record per claim of this results file

    python -m cna_utils.paper.claims --check-paper    # every rule on the paper's own numbers and on a no-effect input
    python -m cna_utils.paper.claims --rules          # every rule in words

``claims.yaml`` lists every item of the paper (where a chapter computes it) and every claim: the
claim in words, the measure it reads from a results file, the paper's value (an expression over
``paper_tables.yaml``), the rule, the smallest n that can decide it, and what the measure reads when
the effect is absent (``no_effect``). A verdict is "replicates", "partly", "does not", or "inconclusive"
when the measure's 95% interval straddles a threshold of the rule or rests on fewer cases than the
rule's smallest n (then the record says about how many cases would decide it).
"""
from __future__ import annotations

import argparse
import ast
import math
import operator
import sys
from functools import lru_cache
from pathlib import Path

import yaml

from cna_utils.paper.numbers import paper_table
from cna_utils.measure.stats import Measure

__all__ = ["VERDICTS", "load_claims", "items", "claims_for", "paper_value", "thresholds", "judge", "verdicts",
           "rule_text", "combine", "check_paper", "main"]

VERDICTS = ("replicates", "partly", "does not", "inconclusive")
HERE = Path(__file__).resolve().parent


@lru_cache(maxsize=1)
def load_claims() -> dict:
    """claims.yaml, with every claim expanded to one entry per item it is judged for."""
    raw = yaml.safe_load((HERE / "claims.yaml").read_text())
    out = []
    for c in raw["claims"]:
        for item, spec in c["items"].items():
            spec = spec or {}
            if item not in raw["items"]:
                raise ValueError(f"claims.yaml: claim {c['id']!r} names item {item!r}, which the items list lacks")
            entry = {k: v for k, v in c.items() if k != "items"}
            entry.update(item=item, rule=spec.get("rule", c.get("rule")), paper=spec.get("paper"),
                         no_effect=spec.get("no_effect", c.get("no_effect")), rule_id=f"{item}.{c['id']}")
            out.append(entry)
    return dict(items=raw["items"], claims=out)


def items() -> dict:
    """Every item of the paper: {key: {what, results (the results file), section, ...}}."""
    return load_claims()["items"]


def claims_for(results_name: str) -> list[dict]:
    """The claims judged from one results file ("02_cna", "second/02_cna", "02_cna_division")."""
    its = items()
    return [c for c in load_claims()["claims"] if its[c["item"]].get("results") == results_name]


# --- the paper's values: small arithmetic over paper_tables.yaml ---------------------------------------------------

def _lookup(*path: str):
    """p("table_5/mask/top99") or p("table_2", "2D", "14_19(/)") -> a value of paper_tables.yaml (rows x
    columns tables, or nested keys)."""
    key, *rest = path[0].split("/") if len(path) == 1 else path
    node = paper_table(key)
    while rest:
        part = rest.pop(0)
        if isinstance(node, dict) and "rows" in node and "columns" in node and part in node["rows"] and rest:
            node = node["rows"][part][node["columns"].index(rest.pop(0))]
        elif isinstance(node, dict) and "rows" in node and part in node["rows"]:
            node = node["rows"][part]
        else:
            node = node[part]
    return node


def _paper_share_growing(key: str) -> float:
    """Table 9's layout: % of LoRA-model scores larger than the original's in the neuron's own direction."""
    rows = paper_table(key)["rows"]
    grow = [math.copysign(1, v[0]) * (x - v[0]) > 0 for v in rows.values() for x in v[1:]]
    return 100 * sum(grow) / len(grow)


def _paper_distinct_heads(key: str) -> int:
    """Table 2's layout: the number of distinct top heads over the operations."""
    return len({c.split("(")[0] for c in paper_table(key)["columns"]})


def _paper_heads_agree(op: str, k: int) -> int:
    """Tables 24-27: the most digit counts whose top-k heads share one head."""
    t = paper_table("tables_24_27")
    tops = [list(t[f"{d}D{op}"]["heads"])[:k] for d in (1, 2, 3)]
    return max(sum(h in top for top in tops) for top in tops for h in top)


def _paper_top_drop(key: str) -> float:
    """Table 1's layout: the largest drop (points) of accuracy over all operations."""
    t = paper_table(key)
    row = t["rows"]["all"]
    return row[0] - min(row[1:])


_FUNCS = dict(p=_lookup, share_growing=_paper_share_growing, distinct_heads=_paper_distinct_heads,
              heads_agree=_paper_heads_agree, top_drop=_paper_top_drop, min=min, max=max, abs=abs)
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.USub: operator.neg}


def _eval(expr, names: dict):
    """A number, or an arithmetic expression over ``names`` and the paper functions above."""
    if isinstance(expr, (int, float)):
        return float(expr)

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name) and node.id in names:
            return names[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.operand))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS:
            return _FUNCS[node.func.id](*[ev(a) for a in node.args])
        raise ValueError(f"claims.yaml: {ast.unparse(node)!r} is not allowed in {expr!r}")

    return float(ev(ast.parse(str(expr), mode="eval")))


def paper_value(claim: dict) -> float | None:
    """The paper's value of the claim's measure for its item (None: the paper prints no such number)."""
    return None if claim.get("paper") is None else _eval(claim["paper"], {})


def thresholds(claim: dict) -> dict:
    """The rule's thresholds as numbers: {"kind": "higher"|"lower"|"band", "replicates": x or [a, b], "partly": ...}."""
    (kind, spec), = claim["rule"].items()
    names = {"paper": paper_value(claim) if claim.get("paper") is not None else float("nan")}
    out = {"kind": kind}
    for key in ("replicates", "partly"):
        if key in spec:
            v = spec[key]
            out[key] = [_eval(x, names) for x in v] if kind == "band" else _eval(v, names)
    return out


# --- the verdict --------------------------------------------------------------------------------------------------

def _side(lo: float, hi: float, t: float, higher: bool) -> str:
    """Where an interval sits against one threshold: "pass", "fail" or "straddles"."""
    if higher:
        return "pass" if lo >= t else "fail" if hi < t else "straddles"
    return "pass" if hi <= t else "fail" if lo > t else "straddles"


def _inside(lo, hi, band) -> str:
    a, b = band
    if lo >= a and hi <= b:
        return "pass"
    if hi < a or lo > b:
        return "fail"
    return "straddles"


def _decide(t: dict, lo: float, hi: float) -> tuple[str, list[float]]:
    """(verdict, the thresholds the interval straddles)."""
    kind = t["kind"]
    if kind == "band":
        rep = _inside(lo, hi, t["replicates"])
        part = _inside(lo, hi, t["partly"]) if "partly" in t else "fail"
        if rep == "pass":
            return "replicates", []
        if rep == "straddles":
            return "inconclusive", [x for x in t["replicates"] if lo < x < hi]
        if part == "pass":
            return "partly", []
        if part == "fail":
            return "does not", []
        return "inconclusive", [x for x in t["partly"] if lo < x < hi]
    higher = kind == "higher"
    rep = _side(lo, hi, t["replicates"], higher)
    if rep == "pass":
        return "replicates", []
    if rep == "straddles":
        return "inconclusive", [t["replicates"]]
    if "partly" not in t:
        return "does not", []
    part = _side(lo, hi, t["partly"], higher)
    if part == "pass":
        return "partly", []
    if part == "fail":
        return "does not", []
    return "inconclusive", [t["partly"]]


def _n_needed(m: Measure, straddled: list[float]) -> int | None:
    """About how many cases would put the interval on one side of the nearest straddled threshold
    (the half-width shrinks as 1/sqrt(n)); None when the value sits on the threshold."""
    half = (m.interval[1] - m.interval[0]) / 2
    dist = min(abs(m.value - t) for t in straddled)
    if dist == 0 or half == 0 or m.n <= 0:
        return None
    return int(math.ceil(m.n * (half / dist) ** 2))


def _fmt(x: float, unit: str) -> str:
    if x != x:
        return "nan"
    if float(x).is_integer() and unit not in ("%", "x"):
        s = f"{x:.0f}"
    else:
        s = f"{x:.2f}" if abs(x) < 1 and x != 0 else f"{x:.1f}"
    return s + unit


def judge(claim: dict, m: Measure | dict) -> dict:
    """One claim's verdict record from its measure: the claim, the paper's value, this run's value
    with its interval and n, the thresholds, the verdict, the rule's id and text."""
    if isinstance(m, dict):
        m = Measure.from_dict(m)
    t = thresholds(claim)
    unit = claim.get("unit", "")
    need = claim.get("min_n", 1)
    lo, hi = m.interval
    if m.n < need:
        verdict, straddled, n_needed = "inconclusive", [], need
        why = f"n = {m.n} is below the rule's smallest n ({need})"
    elif lo != lo or hi != hi:
        verdict, straddled, n_needed, why = "inconclusive", [], None, "no interval (no case could be resampled)"
    else:
        verdict, straddled = _decide(t, lo, hi)
        n_needed = _n_needed(m, straddled) if straddled else None
        why = (f"the interval straddles {', '.join(_fmt(x, unit) for x in straddled)}" if straddled else "")
    p = paper_value(claim)
    this_run = (f"{_fmt(m.value, unit)} [{_fmt(lo, unit)}, {_fmt(hi, unit)}] (n={m.n})" if m.method != "exact"
                else f"{_fmt(m.value, unit)} (n={m.n}, exact)")
    return dict(item=claim["item"], rule_id=claim["rule_id"], claim=claim["claim"], measure=claim["measure"],
                paper=p, paper_text=_fmt(p, unit) if p is not None else "not printed", value=m.value, n=m.n,
                interval=[lo, hi], unit=unit, method=m.method, threshold=t, verdict=verdict, why=why,
                n_needed=n_needed, this_run=this_run + (f"; {m.note}" if m.note else ""), rule=rule_text(claim))


def verdicts(results: dict, results_name: str) -> list[dict]:
    """Every claim of ``results_name``'s items judged on ``results["measures"]``. A claim whose
    measure the file lacks raises, unless the item lists it under ``skip`` (a layout the study does
    not repeat)."""
    measures = results.get("measures", {})
    out = []
    for c in claims_for(results_name):
        if c["measure"] not in measures:
            if c["id"] in items()[c["item"]].get("skip", []):
                continue
            raise KeyError(f"{results_name}: no measure {c['measure']!r} for claim {c['rule_id']} (measures: "
                           f"{', '.join(sorted(measures)) or 'none'}); record it in results['measures']")
        out.append(judge(c, measures[c["measure"]]))
    return out


def combine(records: list[dict]) -> str:
    """An item's verdict over its claims: all the same -> that verdict, otherwise "partly"."""
    vs = {r["verdict"] for r in records}
    if not vs:
        return "not run"
    return vs.pop() if len(vs) == 1 else "partly"


def rule_text(claim: dict) -> str:
    """The rule in words, with its numbers (the scoreboard shows it)."""
    t = thresholds(claim)
    u = claim.get("unit", "")
    f = lambda x: _fmt(x, u)
    if t["kind"] == "band":
        s = f"replicates if the 95% interval lies within [{f(t['replicates'][0])}, {f(t['replicates'][1])}]"
        if "partly" in t:
            s += f"; partly if within [{f(t['partly'][0])}, {f(t['partly'][1])}]"
        s += "; does not if outside"
    else:
        word = "at or above" if t["kind"] == "higher" else "at or below"
        s = f"replicates if the 95% interval lies {word} {f(t['replicates'])}"
        if "partly" in t:
            s += f"; partly if {word} {f(t['partly'])}"
        s += f"; does not if it lies {'below' if t['kind'] == 'higher' else 'above'} " \
             f"{f(t.get('partly', t['replicates']))}"
    return s + f"; inconclusive if it straddles a threshold or n < {claim.get('min_n', 1)}"


# --- calibration: the paper's own numbers and a no-effect input --------------------------------------------------

def check_paper() -> list[dict]:
    """Every claim judged on the paper's own value (as an exact number at the rule's smallest n) and
    on its no-effect value: one row per claim with both verdicts and whether each is as required."""
    rows = []
    for c in load_claims()["claims"]:
        n = max(1, c.get("min_n", 1))
        p = paper_value(c)
        on_paper = judge(c, Measure.exact(p, n))["verdict"] if p is not None else None
        on_null = judge(c, Measure.exact(float(c["no_effect"]), n))["verdict"]
        rows.append(dict(rule_id=c["rule_id"], paper=p, on_paper=on_paper, no_effect=c["no_effect"], on_null=on_null,
                         ok=(on_paper in (None, "replicates")) and on_null == "does not"))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="The paper's claims and their verdict rules.")
    ap.add_argument("--check-paper", action="store_true",
                    help="judge every rule on the paper's numbers and on a no-effect input; exit 1 unless the paper "
                         "replicates and the no-effect input does not, for every rule")
    ap.add_argument("--rules", action="store_true", help="print every rule in words")
    args = ap.parse_args(argv)
    if args.rules:
        for c in load_claims()["claims"]:
            print(f"{c['rule_id']}: {c['claim']}\n    {rule_text(c)}")
    if args.check_paper or not args.rules:
        rows = check_paper()
        for r in rows:
            paper = "no paper number" if r["paper"] is None else f"paper {r['paper']:g} -> {r['on_paper']}"
            print(f"{'ok ' if r['ok'] else 'BAD'} {r['rule_id']}: {paper}; no effect ({r['no_effect']:g}) -> {r['on_null']}")
        bad = [r for r in rows if not r["ok"]]
        print(f"{len(rows) - len(bad)} of {len(rows)} rules pass the paper's numbers and fail a no-effect input")
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
