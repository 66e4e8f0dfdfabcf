"""The student version: solutions out, checks and everything else kept."""
import json
from pathlib import Path

import pytest

from cna_utils.publish import student

ROOT = Path(__file__).resolve().parents[1]


def test_strip_solutions_keeps_the_frame_and_the_indentation():
    src = 'def f(x):\n    """Doc."""\n    # BEGIN SOLUTION\n    y = 2 * x\n    return y\n    # END SOLUTION\n'
    assert student.strip_solutions(src) == 'def f(x):\n    """Doc."""\n    raise NotImplementedError("write your solution here")\n'
    assert student.strip_solutions("a = 1\n") == "a = 1\n"
    with pytest.raises(ValueError, match="not closed"):
        student.strip_solutions("# BEGIN SOLUTION\nx = 1\n")
    with pytest.raises(ValueError, match="without"):
        student.strip_solutions("x = 1\n# END SOLUTION\n")


def test_student_version_of_the_chapters(tmp_path):
    assert student.main([str(ROOT / "notebooks"), str(tmp_path)]) == 0
    books = sorted(tmp_path.glob("*.ipynb"))
    assert [p.name for p in books] == sorted(p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    n_exercises = 0
    for path in books:
        teacher = json.loads((ROOT / "notebooks" / path.name).read_text())
        nb = json.loads(path.read_text())
        text = "".join("".join(c["source"]) for c in nb["cells"])
        assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text
        n_exercises += text.count(student.PLACEHOLDER)
        assert len(nb["cells"]) == len([c for c in teacher["cells"] if "solution" not in c["metadata"].get("tags", [])])
        assert sum("parameters" in c["metadata"].get("tags", []) for c in nb["cells"]) == 1   # still runs with papermill
    assert n_exercises >= 4                                            # chapters 1 and 2: two each
