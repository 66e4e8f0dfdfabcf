"""Run profiles (smoke / book / paper) as data, and where results go.

Usage::

    p = get_profile()                 # PROFILE / CNA_PROFILE environment variable, else "book"
    p["ch1"]["pairs_2d"]
    save_results("01_arithmetic_heads", {...}, results_dir)
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import yaml

__all__ = ["PROFILES", "get_profile", "save_results", "load_results", "spread_layers"]

PROFILES = yaml.safe_load((Path(__file__).with_name("profiles.yaml")).read_text())


def get_profile(name: str | None = None) -> dict:
    """The sizes of profile ``name`` (default: $CNA_PROFILE, then $PROFILE, then "book")."""
    name = name or os.environ.get("CNA_PROFILE") or os.environ.get("PROFILE") or "book"
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}: choose one of {', '.join(PROFILES)} "
                         "(set it as the PROFILE notebook parameter or `make book PROFILE=smoke`)")
    return dict(PROFILES[name], name=name)


def spread_layers(n_layers: int, k: int | None) -> list[int]:
    """``k`` evenly spread layers including the first and the last (all layers when k is None)."""
    if k is None or k >= n_layers:
        return list(range(n_layers))
    if k == 1:
        return [n_layers // 2]
    return sorted({round(i * (n_layers - 1) / (k - 1)) for i in range(k)})


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
