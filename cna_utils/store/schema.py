"""What a chapter's results file must hold: the keys other code reads from it, with their types.

A results file is read by later chapters (chapters 2-5 take chapter 1's top head, chapter 6 takes
chapter 5's LoRA layer and template), by the scoreboard and the findings tables (verdicts and
measures) and by the tests. ``REQUIRED`` lists those keys per chapter, as dotted paths;
``save_results`` checks them when it writes a chapter's file and says which are missing (the file
is written first, so nothing computed is lost).

Usage::

    problems("05_lora", results)        # [] or ["best_shallow_layer: missing", ...]
    field(results, "table_2.top_heads") # the value at a dotted path (KeyError naming the path)
"""
from __future__ import annotations

__all__ = ["REQUIRED", "EVERY_CHAPTER", "chapter_of", "problems", "field"]

NUMBER = (int, float)

# Every chapter's file: who wrote it, in which profile, and the claims' verdicts.
EVERY_CHAPTER = {"model": str, "profile": str, "verdicts": list}

REQUIRED: dict[str, dict[str, type | tuple]] = {
    "01_arithmetic_heads": {"table_2.top_heads": dict, "table_2.ranked": dict, "table_1.heads": list,
                            "base_accuracy": dict, "measures": dict},
    "02_cna": {"head": str, "table_5": dict, "measures": dict},
    "03_prediction_enhancing_dag": {"head": str, "measures": dict},
    "04_hidden_interpretable_neurons": {"head": str, "measures": dict},
    "05_lora": {"best_shallow_layer": int, "figure_2": dict, "data.template": int, "measures": dict},
    "06_pruning": {"measures": dict},
    "07_gender_bias": {"measures": dict},
}


def chapter_of(name: str) -> str | None:
    """The chapter a results file belongs to (``02_cna_division`` -> ``02_cna``), or None."""
    name = name.rsplit("/", 1)[-1]                           # "second/01_arithmetic_heads"
    for chapter in sorted(REQUIRED, key=len, reverse=True):
        if name == chapter or name.startswith(chapter + "_"):
            return chapter
    return None


def field(results: dict, path: str):
    """The value at the dotted ``path`` of ``results`` (a KeyError that names the path otherwise)."""
    value = results
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(f"results have no {path!r} (missing at {part!r})")
        value = value[part]
    return value


def problems(name: str, results: dict) -> list[str]:
    """What the results of file ``name`` lack of ``REQUIRED`` (a file of no known chapter: nothing)."""
    chapter = chapter_of(name)
    if chapter is None:
        return []
    out = []
    for path, kind in {**EVERY_CHAPTER, **REQUIRED[chapter]}.items():
        try:
            value = field(results, path)
        except KeyError:
            out.append(f"{path}: missing")
            continue
        if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
            want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            out.append(f"{path}: {type(value).__name__}, expected {want}")
    return out
