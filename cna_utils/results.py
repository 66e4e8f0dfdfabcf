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

__all__ = ["save_results", "load_results"]


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
    from .cache import save_atomic
    path = Path(results_dir) / f"{name}.json"
    save_atomic(_clean(results), path, save=lambda obj, f: f.write_text(json.dumps(obj, indent=2)))
    return path


def load_results(name: str, results_dir: str | os.PathLike) -> dict:
    return json.loads((Path(results_dir) / f"{name}.json").read_text())
