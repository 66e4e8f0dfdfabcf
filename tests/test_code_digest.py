"""The per-unit caches key on the code that computes a unit (``store.code``): a unit saved by other
code is computed again, a comment or docstring edit changes nothing."""
import shutil
from pathlib import Path

import pandas as pd
import pytest

from cna_utils.store import code
from cna_utils.store.code import code_digest, module_files

from conftest import PadTokenizer, make_model, random_cases

PKG = Path(code.__file__).resolve().parents[1]


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A copy of ``cna_utils`` that the digests read instead of the installed one."""
    copy = tmp_path / "cna_utils"
    shutil.copytree(PKG, copy, ignore=shutil.ignore_patterns("__pycache__", "*.yaml"))
    monkeypatch.setattr(code, "PACKAGE", copy)
    return copy


def _append(path: Path, line: str = "_CHANGED = 1"):
    """A change of behaviour (a new module-level name) at the end of ``path``."""
    path.write_text(path.read_text() + f"\n{line}\n")


def test_the_closure_follows_imports_and_stops_at_unrelated_modules():
    files = {str(f.relative_to(PKG)) for f in module_files(["cna_utils.paper.study"])}
    assert {"paper/study.py", "measure/importance.py", "measure/compare.py", "model/hooks.py",
            "__init__.py", "paper/__init__.py", "measure/__init__.py"} <= files
    assert not {f for f in files if f.startswith("publish/")}        # the book's pages compute no unit
    sweep = {str(f.relative_to(PKG)) for f in module_files(["cna_utils.measure.sweep"])}
    assert "measure/importance.py" not in sweep and "measure/sweep.py" in sweep


def test_a_behaviour_change_changes_the_digest_and_a_docstring_or_comment_does_not(package):
    imp = package / "measure" / "importance.py"
    before = code_digest("cna_utils.paper.study")
    text = imp.read_text()
    first_def = text.index("\ndef ") + 1
    doc_start = text.index('"""', first_def) + 3
    imp.write_text(text[:doc_start] + "A reworded docstring. " + text[doc_start:] + "\n# a comment\n")
    assert code_digest("cna_utils.paper.study") == before
    _append(imp)
    after = code_digest("cna_utils.paper.study")
    assert after != before
    assert code_digest("cna_utils.measure.sweep") == code_digest("cna_utils.measure.sweep", package=PKG)
    _append(package / "publish" / "plots.py")                 # a page module: no unit changes
    assert code_digest("cna_utils.paper.study") == after


def test_a_cna_saved_before_a_change_to_importance_is_computed_again(package, tmp_path):
    from cna_utils.paper.study import cna_cases
    model = make_model("qwen2")
    tok = PadTokenizer()
    cases = random_cases(model, n=2)
    cache = tmp_path / "units"
    first = cna_cases(model, tok, cases, "1_0", cache_dir=cache)
    again = cna_cases(model, tok, cases, "1_0", cache_dir=cache)
    assert again.seconds == first.seconds and len(list(cache.glob("cna-*.pt"))) == 1      # read back
    _append(package / "measure" / "importance.py")
    cna_cases(model, tok, cases, "1_0", cache_dir=cache)
    assert len(list(cache.glob("cna-*.pt"))) == 2                                          # computed again


def test_a_sweep_layer_saved_by_other_code_is_not_read_back(package, tmp_path):
    from cna_utils.measure.sweep import head_sweep_cases
    from cna_utils.model.forward import Run
    model = make_model("llama-gqa")
    tok = PadTokenizer()
    cases = random_cases(model, n=3)
    cache = tmp_path / "sweep"
    a = head_sweep_cases(model, tok, cases, run=Run(cache))
    saved = sorted(p.stat().st_mtime_ns for p in cache.rglob("*.pt"))
    assert saved
    head_sweep_cases(model, tok, cases, run=Run(cache))
    assert sorted(p.stat().st_mtime_ns for p in cache.rglob("*.pt")) == saved            # read back, not rewritten
    _append(package / "measure" / "sweep.py")
    b = head_sweep_cases(model, tok, cases, run=Run(cache))
    assert sorted(p.stat().st_mtime_ns for p in cache.rglob("*.pt")) != saved             # computed again
    pd.testing.assert_frame_equal(a, b)                                                    # the same numbers
