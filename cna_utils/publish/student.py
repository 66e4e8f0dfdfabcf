"""The student version of the chapters: every exercise's solution taken out, the checks kept.

Usage (what ``make student`` runs)::

    python -m cna_utils.publish.student notebooks student       # writes student/NN_name.ipynb

In a chapter, a scaffolded exercise is a code cell whose solution sits between the lines
``# BEGIN SOLUTION`` and ``# END SOLUTION`` (the book shows that cell folded), followed by a
checker cell that compares the student's function with the library. The student version keeps
the lines before and after the markers, replaces what is between them with
``raise NotImplementedError("write your solution here")`` at the same indentation, removes every
cell tagged ``solution`` (worked answers in prose) and every output.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["strip_solutions", "student_notebook", "main"]

BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
PLACEHOLDER = 'raise NotImplementedError("write your solution here")'


def strip_solutions(source: str) -> str:
    """``source`` with every BEGIN/END SOLUTION block replaced by the placeholder."""
    out, inside = [], False
    for line in source.splitlines(keepends=True):
        text = line.strip()
        if text == BEGIN:
            if inside:
                raise ValueError("a '# BEGIN SOLUTION' inside another solution block")
            inside = True
            indent = line[:len(line) - len(line.lstrip())]
            out.append(f"{indent}{PLACEHOLDER}\n")
        elif text == END:
            if not inside:
                raise ValueError("'# END SOLUTION' without a '# BEGIN SOLUTION' before it")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError("a '# BEGIN SOLUTION' block is not closed by '# END SOLUTION'")
    return "".join(out)


def student_notebook(nb: dict) -> dict:
    """A copy of notebook ``nb`` (nbformat JSON) without solutions, solution cells and outputs."""
    cells = []
    for cell in nb["cells"]:
        if "solution" in cell.get("metadata", {}).get("tags", []):
            continue
        cell = json.loads(json.dumps(cell))
        if cell["cell_type"] == "code":
            cell["source"] = strip_solutions("".join(cell["source"])).splitlines(keepends=True)
            cell["outputs"], cell["execution_count"] = [], None
            tags = [t for t in cell.get("metadata", {}).get("tags", []) if t not in ("hide-input", "hide-cell")]
            cell.setdefault("metadata", {})["tags"] = tags
            if not tags:
                del cell["metadata"]["tags"]
        cells.append(cell)
    return dict(nb, cells=cells)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", nargs="?", default="notebooks", help="folder of the chapters")
    ap.add_argument("out", nargs="?", default="student", help="folder for the student version")
    args = ap.parse_args(argv)
    src, out = Path(args.src), Path(args.out)
    books = sorted(src.glob("[0-9][0-9]_*.ipynb"))
    if not books:
        print(f"no chapters (NN_name.ipynb) under {src}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    for path in books:
        nb = student_notebook(json.loads(path.read_text()))
        (out / path.name).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    print(f"{len(books)} student notebooks written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
