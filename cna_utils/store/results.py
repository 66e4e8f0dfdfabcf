"""A chapter's results file: its key numbers as JSON (read by the scoreboard, the findings tables,
later chapters and the tests).

Usage::

    save_results("01_arithmetic_heads", {...}, results_dir)
    load_results("01_arithmetic_heads", results_dir)["table_2"]
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from cna_utils.store.schema import problems

__all__ = ["save_results", "load_results", "differences", "VOLATILE"]


def _clean(x):
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if hasattr(x, "item"):
        return _clean(x.item())
    return x


def save_results(name: str, results: dict, results_dir: str | os.PathLike) -> Path:
    """Write a chapter's key results to ``results_dir/name.json`` (read by the scoreboard and tests)."""
    from cna_utils.store.cache import save_atomic
    path = Path(results_dir) / f"{name}.json"
    save_atomic(_clean(results), path, save=lambda obj, f: f.write_text(json.dumps(obj, indent=2)))
    missing = problems(name, results)
    if missing:
        raise ValueError(f"{path} is written, but the chapters and pages that read it need what it lacks: "
                         f"{'; '.join(missing)} (cna_utils/store/schema.py lists what each chapter's file holds)")
    return path


def load_results(name: str, results_dir: str | os.PathLike) -> dict:
    return json.loads((Path(results_dir) / f"{name}.json").read_text())


# Keys whose values differ between two runs of the same code on the same inputs: when and from which
# commit a file was written, how long its parts took, and where on disk its artefacts live.
VOLATILE = frozenset({"date", "code_commit", "seconds", "adapter", "cache", "results_dir"})


def differences(a: str | os.PathLike, b: str | os.PathLike, ignore=VOLATILE) -> list[str]:
    """Every difference between two folders of results files (the same chapters run twice, say
    before and after a change that must not change any number): files present in only one, and
    for each file in both the paths of values that differ, ``ignore``'s keys left out. Empty when
    the two runs agree."""
    a, b = Path(a), Path(b)
    names_a = {p.relative_to(a) for p in a.rglob("*.json") if "cache" not in p.relative_to(a).parts}
    names_b = {p.relative_to(b) for p in b.rglob("*.json") if "cache" not in p.relative_to(b).parts}
    out = [f"{n}: only in {a}" for n in sorted(names_a - names_b)]
    out += [f"{n}: only in {b}" for n in sorted(names_b - names_a)]
    for n in sorted(names_a & names_b):
        out += [f"{n}: {d}" for d in _diff(json.loads((a / n).read_text()), json.loads((b / n).read_text()), "", ignore)]
    return out


def _diff(x, y, path: str, ignore) -> list[str]:
    if isinstance(x, dict) and isinstance(y, dict):
        out = []
        for k in sorted(set(x) | set(y)):
            if k in ignore:
                continue
            if k not in x or k not in y:
                out.append(f"{path}/{k}: only in {'the first' if k in x else 'the second'}")
            else:
                out += _diff(x[k], y[k], f"{path}/{k}", ignore)
        return out
    if isinstance(x, list) and isinstance(y, list):
        if len(x) != len(y):
            return [f"{path}: {len(x)} items vs {len(y)}"]
        return [d for i, (u, v) in enumerate(zip(x, y)) for d in _diff(u, v, f"{path}/{i}", ignore)]
    return [] if x == y else [f"{path}: {str(x)[:60]!s} != {str(y)[:60]!s}"]


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(description="Compare two folders of results files; exit 1 if any number differs.")
    ap.add_argument("a")
    ap.add_argument("b")
    args = ap.parse_args(argv)
    diffs = differences(args.a, args.b)
    for d in diffs:
        print(d)
    print(f"{len(diffs)} differences" if diffs else "identical (dates, commits, timings and paths left out)")
    return 1 if diffs else 0


if __name__ == "__main__":
    raise SystemExit(main())
