"""The student version of the chapters and their autograding, with nbgrader.

Usage (what ``make student`` runs)::

    python -m cna_utils.publish.student notebooks student     # the course folder student/, its release:
                                                              # student/release/cna-book/NN_name.ipynb
    cd student && nbgrader autograde cna-book                 # grade student/submitted/<who>/cna-book/

In a chapter, an exercise is a code cell whose solution sits between the lines ``# BEGIN
SOLUTION`` and ``# END SOLUTION`` (the book shows that cell folded; nbgrader metadata: a solution
cell), followed by a checker cell that compares the student's function with the library (an
autograded test cell worth ``points``, locked). ``nbgrader generate_assignment`` replaces every
solution with ``raise NotImplementedError("write your solution here")`` at the same indentation,
clears the outputs and records the checker cells' checksums; the release copies show the exercise
cells unfolded. ``nbgrader autograde`` executes a submission (the whole chapter: set the profile in
its parameters cell, e.g. PROFILE = "smoke", for a quick grading) and scores each checker cell.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["ASSIGNMENT", "PLACEHOLDER", "exercises", "course", "generate", "autograde", "scores", "main"]

ASSIGNMENT = "cna-book"
PLACEHOLDER = 'raise NotImplementedError("write your solution here")'
CONFIG = f"""# nbgrader's settings for this course (written by `python -m cna_utils.publish.student`)
c = get_config()  # noqa: F821
c.CourseDirectory.root = "."
c.ClearSolutions.code_stub = {{"python": {PLACEHOLDER!r}}}
c.ExecutePreprocessor.timeout = 3600          # a chapter's cell may run minutes (a sweep, a LoRA run)
c.Execute.timeout = 3600
"""


def exercises(nb: dict) -> list[tuple[dict, dict]]:
    """(solution cell, checker cell) of every exercise of a notebook (nbformat JSON); a clear error
    when a solution cell lacks its nbgrader metadata or is not followed by an autograded checker."""
    cells, out = nb["cells"], []
    for i, c in enumerate(cells):
        if c["cell_type"] != "code" or "BEGIN SOLUTION" not in "".join(c["source"]):
            continue
        meta = c.get("metadata", {}).get("nbgrader", {})
        check = cells[i + 1] if i + 1 < len(cells) else {}
        cmeta = check.get("metadata", {}).get("nbgrader", {})
        if not meta.get("solution") or not (cmeta.get("grade") and cmeta.get("points")):
            raise ValueError(f"cell {i} holds a solution: mark it an nbgrader solution cell and the cell after it an "
                             "autograded test with points (metadata 'nbgrader')")
        out.append((c, check))
    return out


def _nbgrader(root: Path, *args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("nbgrader")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "nbgrader"]
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    run = subprocess.run(cmd + list(args), cwd=root, capture_output=True, text=True, env=env)   # it calls alembic
    if run.returncode != 0:
        raise RuntimeError(f"nbgrader {' '.join(args)} failed in {root}:\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}")
    return run


def course(src: Path, root: Path, parameters: dict | None = None) -> list[Path]:
    """Make ``root`` an nbgrader course whose assignment ``cna-book`` holds the chapters of ``src``
    (``parameters``: values written into each chapter's parameters cell, e.g. {"PROFILE": "smoke"})."""
    books = sorted(Path(src).glob("[0-9][0-9]_*.ipynb"))
    if not books:
        raise FileNotFoundError(f"no chapters (NN_name.ipynb) under {src}")
    source = Path(root) / "source" / ASSIGNMENT
    source.mkdir(parents=True, exist_ok=True)
    (Path(root) / "nbgrader_config.py").write_text(CONFIG)
    for path in books:
        nb = json.loads(path.read_text())
        exercises(nb)
        for cell in nb["cells"]:
            if parameters and "parameters" in cell.get("metadata", {}).get("tags", []):
                cell["source"] = "".join(cell["source"]) + "\n" + "".join(
                    f"{k} = {v!r}\n" for k, v in parameters.items())
        (source / path.name).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return sorted(source.glob("*.ipynb"))


def generate(root: Path) -> list[Path]:
    """``nbgrader generate_assignment``: the student copies under ``root/release/cna-book/``, their
    exercise cells unfolded."""
    _nbgrader(Path(root), "generate_assignment", ASSIGNMENT, "--force")
    released = sorted((Path(root) / "release" / ASSIGNMENT).glob("*.ipynb"))
    for path in released:
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            tags = [t for t in cell.get("metadata", {}).get("tags", []) if t not in ("hide-input", "hide-cell")]
            if "tags" in cell.get("metadata", {}):
                cell["metadata"]["tags"] = tags
        path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return released


def autograde(root: Path, student: str) -> None:
    """``nbgrader autograde`` of ``root/submitted/<student>/cna-book/``."""
    _nbgrader(Path(root), "autograde", ASSIGNMENT, "--student", student, "--force")


def scores(root: Path) -> dict[str, dict[str, float]]:
    """{student: {notebook: score}} from the course's gradebook."""
    from nbgrader.api import Gradebook
    out: dict[str, dict[str, float]] = {}
    with Gradebook(f"sqlite:///{Path(root).resolve() / 'gradebook.db'}") as gb:
        for sub in gb.assignment_submissions(ASSIGNMENT):
            out[sub.student.id] = {nb.name: float(nb.score) for nb in sub.notebooks}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", nargs="?", default="notebooks", help="folder of the chapters")
    ap.add_argument("out", nargs="?", default="student", help="the course folder (nbgrader's root)")
    args = ap.parse_args(argv)
    try:
        course(Path(args.src), Path(args.out))
    except FileNotFoundError as err:
        print(err, file=sys.stderr)
        return 2
    released = generate(Path(args.out))
    for path in released:                 # the student notebooks also at the top of the folder
        shutil.copy(path, Path(args.out) / path.name)
    sources = sorted((Path(args.out) / "source" / ASSIGNMENT).glob("*.ipynb"))
    n = sum(len(exercises(json.loads(p.read_text()))) for p in sources)
    print(f"{len(released)} student notebooks ({n} exercises) in {Path(args.out) / 'release' / ASSIGNMENT}; "
          f"grade submissions with `cd {args.out} && nbgrader autograde {ASSIGNMENT}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
