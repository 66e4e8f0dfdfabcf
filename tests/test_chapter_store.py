"""The chapter store: a chapter runs again exactly when something it depends on changed."""
import json
import shutil
from pathlib import Path

import nbformat
import pytest

from cna_utils.publish.book import execute_notebooks
from cna_utils.publish.chapter_store import chapter_key, ChapterStore, library_files

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _chapter(path: Path, prose: str, code: str) -> None:
    """A one-chapter book: a parameters cell, a cell that counts its own executions (in a file
    beside the results) and writes a results file, and one prose cell."""
    params = nbformat.v4.new_code_cell('PROFILE, MODEL, RESULTS_DIR = "smoke", "smollm2-135m", "results"')
    params.metadata["tags"] = ["parameters"]
    run = nbformat.v4.new_code_cell(
        "import json, pathlib\n"
        "res = pathlib.Path(RESULTS_DIR); res.mkdir(parents=True, exist_ok=True)\n"
        "runs = res / 'runs.txt'; runs.write_text(runs.read_text() + 'x' if runs.exists() else 'x')\n"
        f"{code}\n"
        "(res / '01_toy.json').write_text(json.dumps(dict(value=value, run=dict(date=str(len(runs.read_text()))))))\n"
        "print('value', value)")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f"# Toy\n\n{prose}"), params, run],
                                  metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


def _build(root, store, **kw):
    execute_notebooks(root, "smoke", "smollm2-135m", parts=("main",), store=store, **kw)
    page = nbformat.read(root / "book" / "chapters" / "01_toy.ipynb", as_version=4)
    runs = (root / "book" / "results" / "runs.txt").read_text()
    return page, len(runs)


def test_a_prose_edit_reuses_the_run_and_a_code_edit_executes_again(tmp_path, capsys):
    root, store = tmp_path / "book", ChapterStore(tmp_path / "store")
    nb = root / "notebooks" / "01_toy.ipynb"
    _chapter(nb, "First words.", "value = 41 + 1")
    page, runs = _build(root, store)
    assert runs == 1 and "executing" in capsys.readouterr().out
    _chapter(nb, "Other words, same code.", "value = 41 + 1")
    page, runs = _build(root, store)
    out = capsys.readouterr().out
    assert runs == 1 and "reused" in out and "executing" not in out           # nothing executed
    assert "Other words" in page.cells[0].source                               # the edited prose
    assert any("value 42" in o.get("text", "") for c in page.cells if c.cell_type == "code" for o in c.outputs)
    assert json.loads((root / "book" / "results" / "01_toy.json").read_text())["value"] == 42
    _chapter(nb, "Other words.", "value = 40 + 3")
    page, runs = _build(root, store)
    assert runs == 2 and "executing chapters/01_toy.ipynb (profile=smoke, model=smollm2-135m; code)" in capsys.readouterr().out
    assert json.loads((root / "book" / "results" / "01_toy.json").read_text())["value"] == 43
    _chapter(nb, "Back to the first code.", "value = 41 + 1")                   # its run is still stored
    page, runs = _build(root, store)
    assert runs == 2 and json.loads((root / "book" / "results" / "01_toy.json").read_text())["value"] == 42
    page, runs = _build(root, store, force=True)
    assert runs == 3 and "forced" in capsys.readouterr().out


def test_the_key_follows_parameters_and_earlier_results(tmp_path):
    nb = tmp_path / "notebooks" / "03_toy.ipynb"
    _chapter(nb, "Prose.", "value = 1")
    res = tmp_path / "results"
    res.mkdir()
    base = chapter_key(nb, dict(PROFILE="smoke", MODEL="m", RESULTS_DIR="/a"), res)
    assert chapter_key(nb, dict(PROFILE="smoke", MODEL="m", RESULTS_DIR="/elsewhere"), res) == base
    assert chapter_key(nb, dict(PROFILE="book", MODEL="m"), res)["parameters"] != base["parameters"]
    (res / "02_cna.json").write_text(json.dumps(dict(x=0.40625, run=dict(date="today", seconds=3.0))))
    first = chapter_key(nb, dict(PROFILE="smoke", MODEL="m"), res)
    assert first["reads"] != base["reads"]
    (res / "02_cna.json").write_text(json.dumps(dict(x=0.40625, run=dict(date="tomorrow", seconds=9.0))))
    assert chapter_key(nb, dict(PROFILE="smoke", MODEL="m"), res)["reads"] == first["reads"]   # re-rendered only
    (res / "02_cna.json").write_text(json.dumps(dict(x=0.40625000000000006, run=dict(date="later"))))
    assert chapter_key(nb, dict(PROFILE="smoke", MODEL="m"), res)["reads"] == first["reads"]   # the last bit only
    (res / "02_cna.json").write_text(json.dumps(dict(x=2)))
    assert chapter_key(nb, dict(PROFILE="smoke", MODEL="m"), res)["reads"] != first["reads"]
    (res / "04_later.json").write_text("{}")                                   # a later chapter is not read
    (res / "02_cna_division.json").write_text("{}")                            # nor the division study
    assert set(chapter_key(nb, dict(PROFILE="smoke", MODEL="m"), res)["read"]) == {"02_cna.json"}
    assert set(chapter_key(nb, dict(PROFILE="smoke", MODEL="m", OP="/"), res)["read"]) == {"02_cna.json",
                                                                                            "02_cna_division.json"}


def test_a_library_change_says_which_file_and_reaches_only_the_chapters_that_import_it(tmp_path):
    pkg = tmp_path / "cna_utils"
    shutil.copytree(ROOT / "cna_utils", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    nb = ROOT / "notebooks" / "02_cna.ipynb"
    store = ChapterStore(tmp_path / "store")
    key = chapter_key(nb, dict(PROFILE="smoke", MODEL="m"), tmp_path, package=pkg)
    store.save("02", key, nb, [])
    assert store.lookup("02", key)[0] is not None
    f = pkg / "measure" / "importance.py"
    f.write_text(f.read_text() + "\n# an edit\n")
    changed = chapter_key(nb, dict(PROFILE="smoke", MODEL="m"), tmp_path, package=pkg)
    hit, why = store.lookup("02", changed)
    assert hit is None and why == "library: measure/importance.py"
    users = {p.name[:2] for p in NOTEBOOKS if ROOT / "cna_utils" / "measure" / "importance.py" in library_files(p)}
    assert users == {"02", "03", "04", "05", "06", "07"}                   # chapter 1 scores no neuron
    untouched = pkg / "publish" / "student.py"                  # imported by no chapter
    assert all(ROOT / "cna_utils" / "publish" / "student.py" not in library_files(p) for p in NOTEBOOKS)
    untouched.write_text(untouched.read_text() + "\n# an edit\n")
    assert chapter_key(nb, dict(PROFILE="smoke", MODEL="m"), tmp_path, package=pkg) == changed


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_chapter_depends_on_the_modules_it_imports(nb):
    files = {str(f.relative_to(ROOT)) for f in library_files(nb)}
    assert "cna_utils/publish/chapter.py" in files and "cna_utils/store/profiles.yaml" in files
    assert "cna_utils/model/weights.yaml" in files and "cna_utils/__init__.py" in files
