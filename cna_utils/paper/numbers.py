"""The paper's reported numbers (Llama-7B unless noted), for the side-by-side tables.

Usage::

    paper_table("table_1")["rows"]["2D+"]      # [96.8, 42.9, 83.2, 92.5, 89.7, 91.6]
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml

__all__ = ["paper_table", "PAPER_MODEL"]

PAPER_MODEL = "Llama-7B"


@lru_cache(maxsize=1)
def _tables() -> dict:
    return yaml.safe_load((Path(__file__).with_name("paper_tables.yaml")).read_text())


def paper_table(key: str):
    """One entry of paper_tables.yaml, e.g. "table_1", "tables_24_27", "table_14_prompts"."""
    t = _tables()
    if key not in t:
        raise KeyError(f"no paper table {key!r}; available: {', '.join(t)}")
    return t[key]
