"""The student version and its autograding, with nbgrader: the solutions score every point, the
student copy none."""
import json
import shutil
from pathlib import Path

import pytest

from cna_utils.publish import student

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("nb", CHAPTERS, ids=lambda p: p.stem)
def test_every_exercise_is_a_solution_cell_with_an_autograded_checker(nb):
    pairs = student.exercises(json.loads(nb.read_text()))
    assert len(pairs) == 2
    for solution, check in pairs:
        assert solution["metadata"]["nbgrader"]["solution"] and not solution["metadata"]["nbgrader"]["grade"]
        assert check["metadata"]["nbgrader"]["grade"] and check["metadata"]["nbgrader"]["locked"]
        assert "assert" in "".join(check["source"]) and check["metadata"]["nbgrader"]["points"] == 1
    ids = [c["metadata"]["nbgrader"]["grade_id"] for pair in pairs for c in pair]
    assert len(ids) == len(set(ids))


def test_an_unmarked_solution_is_refused():
    nb = {"cells": [{"cell_type": "code", "source": ["# BEGIN SOLUTION\n", "x = 1\n", "# END SOLUTION\n"],
                     "metadata": {}}]}
    with pytest.raises(ValueError, match="nbgrader solution cell"):
        student.exercises(nb)


def test_student_version_of_the_chapters(tmp_path):
    assert student.main([str(ROOT / "notebooks"), str(tmp_path)]) == 0
    released = sorted((tmp_path / "release" / student.ASSIGNMENT).glob("*.ipynb"))
    assert [p.name for p in released] == [p.name for p in CHAPTERS]
    for path in released:
        teacher = json.loads((ROOT / "notebooks" / path.name).read_text())
        nb = json.loads(path.read_text())
        text = "".join("".join(c["source"]) for c in nb["cells"])
        assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text
        assert text.count(student.PLACEHOLDER) == 2 and len(nb["cells"]) == len(teacher["cells"])
        assert sum("parameters" in c["metadata"].get("tags", []) for c in nb["cells"]) == 1   # still runs with papermill
        assert not any("hide-input" in c["metadata"].get("tags", []) for c in nb["cells"] if c["cell_type"] == "code"
                       and student.PLACEHOLDER in "".join(c["source"]))
        assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code")


def test_autograde_gives_the_solutions_every_point_and_the_student_copy_none(tmp_path):
    """Chapter 1 on the smoke profile, graded twice by nbgrader: the teacher's copy (the solutions
    filled in) and the released copy as a student receives it (nothing filled in)."""
    chapter = tmp_path / "chapters"
    chapter.mkdir()
    shutil.copy(ROOT / "notebooks" / "01_arithmetic_heads.ipynb", chapter)
    source = student.course(chapter, tmp_path / "course", dict(PROFILE="smoke", MODEL="smollm2-135m"))
    released = student.generate(tmp_path / "course")
    for who, copy in (("filled", source), ("empty", released)):
        folder = tmp_path / "course" / "submitted" / who / student.ASSIGNMENT
        folder.mkdir(parents=True)
        for nb in copy:
            shutil.copy(nb, folder / nb.name)
        student.autograde(tmp_path / "course", who)
    got = student.scores(tmp_path / "course")
    assert got == {"filled": {"01_arithmetic_heads": 2.0}, "empty": {"01_arithmetic_heads": 0.0}}
