"""Every notebook executes in the smoke profile and the book builds (in a temporary copy)."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cna_utils.paper import claims

from cna_utils.publish.book import DIVISION_CHAPTERS, execute_notebooks, SECOND_CHAPTERS
from cna_utils.model.weights import WEIGHTS

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(nb):
    cells = json.loads(nb.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert code and all(not c.get("outputs") and c.get("execution_count") is None for c in code)
    assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in code), "no papermill parameters cell"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_cells_narrate_and_call(nb):
    """A code cell holds at most 15 lines (an exercise's solution apart): the logic lives in the
    library, where the tests cover it, and a cell calls it and shows the result."""
    cells = json.loads(nb.read_text())["cells"]
    long = [(i, len(c["source"])) for i, c in enumerate(cells) if c["cell_type"] == "code"
            and len("".join(c["source"]).splitlines()) > 15 and "BEGIN SOLUTION" not in "".join(c["source"])]
    assert long == [], f"cells over 15 lines (index, lines): {long}"


@pytest.fixture(scope="module")
def smoke_book(tmp_path_factory):
    """Copy the book sources, execute every notebook with PROFILE=smoke, build the HTML."""
    root = tmp_path_factory.mktemp("book")
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(ROOT / name, root / name)
    shutil.copytree(ROOT / "notebooks", root / "notebooks")
    shutil.copytree(ROOT / "_static", root / "_static")
    shutil.copytree(ROOT / "book", root / "book", ignore=shutil.ignore_patterns("chapters", "results", "_generated"))
    if (ROOT / "bench" / "results").exists():
        shutil.copytree(ROOT / "bench" / "results", root / "bench" / "results")
    store = tmp_path_factory.mktemp("store")          # the chapter store of this build alone: every chapter executes
    subprocess.run([sys.executable, "-m", "cna_utils.publish.book", "--profile", "smoke", "--model", "smollm2-135m",
                    "--second-model", "smollm2-135m", "--root", str(root), "--store", str(store)], check=True)
    return root


def test_smoke_book_builds(smoke_book):
    html = smoke_book / "_build" / "html"
    assert (html / "book" / "intro.html").exists()
    for nb in NOTEBOOKS:
        page = html / "book" / "chapters" / f"{nb.stem}.html"
        assert page.exists(), page
        assert "_static/book.css" in page.read_text(), "the book's stylesheet is not linked"
        assert "Traceback" not in page.read_text()


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_smoke_notebook_outputs(smoke_book, nb):
    executed = json.loads((smoke_book / "book" / "chapters" / nb.name).read_text())
    errors = [o for c in executed["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
              if o["output_type"] == "error"]
    assert not errors
    images = [o for c in executed["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert images, "every chapter draws at least one figure"
    results = json.loads((smoke_book / "book" / "results" / f"{nb.stem}.json").read_text())
    assert results["profile"] == "smoke"


def test_chapter1_results_are_consistent(smoke_book):
    r = json.loads((smoke_book / "book" / "results" / "01_arithmetic_heads.json").read_text())
    assert set(r["base_accuracy"]) == {"all", "2D+", "2D-", "2D*", "2D/"}
    assert all(0 <= v <= 100 for v in r["base_accuracy"].values())
    assert len(r["table_1"]["heads"]) == 5
    assert set(r["table_2"]["top_heads"]) == {"+", "-", "*", "/"}
    assert r["heads_swept"] == 27 and r["heads_per_forward"] >= 9
    assert 5 <= len(r["heads_confirmed_by_set"]["2d"]) <= 6 and r["screen"]["method"] == "atp"
    assert set(r["table_1"]["heads"]) <= set(r["heads_confirmed"])              # the tables rank confirmed heads


def test_chapters_2_to_4_results_are_consistent(smoke_book):
    load = lambda n: json.loads((smoke_book / "book" / "results" / f"{n}.json").read_text())
    r2, r3, r4 = load("02_cna"), load("03_prediction_enhancing_dag"), load("04_hidden_interpretable_neurons")
    assert r2["head"] == r3["head"] == r4["head"]                       # one head and case across chapters
    assert r2["case"]["prompt"] == r3["case"]["prompt"] == r4["case"]["prompt"]
    assert set(r2["table_5"]) == {"mask", "keep", "coef"}
    assert all(0 <= v <= 100 for k in ("mask", "keep") for v in r2["table_5"][k].values())
    assert len(r2["table_4"]) == 10
    assert set(r3["table_6"]) == {"top99", "top50", "top30", "top20", "top10"}
    numbers = [r4["table_8"][f"M={m}"]["number"] for m in range(4)]
    assert numbers == sorted(numbers, reverse=True)                     # a higher threshold keeps fewer neurons


def test_chapters_5_to_7_results_are_consistent(smoke_book):
    load = lambda n: json.loads((smoke_book / "book" / "results" / f"{n}.json").read_text())
    r5, r6, r7 = load("05_lora"), load("06_pruning"), load("07_gender_bias")
    r2 = load("02_cna")["case"]
    assert r5["case"] == {"prompt": r2["prompt"], "answer": r2["answer"]}  # Table 9 follows chapter 2's case
    assert all(0 <= v["test_acc"] <= 1 for v in r5["figure_2"].values())
    assert all(r["steps"] == 4 for r in r5["runs"])                      # 64 sentences / batch 16, one epoch
    usable = [t for t in r5["data"]["templates"] if t["n"] > 0]
    assert r5["data"]["template"] == max(usable, key=lambda t: (t["answer"], -t["template"]))["template"]
    assert len(r5["table_9"]["neurons"]) == 3
    assert r6["lora_layer"] == r5["best_shallow_layer"]                  # chapter 6 reuses chapter 5's LoRA
    assert r6["pruned_vs_zeroed_max_abs"] < 1e-3 and 0 < r6["kept_share"] < 1
    assert r6["table_11"][f"LoRA{r6['lora_layer']}"] == 100 * r5["figure_2"][str(r6["lora_layer"])]["test_acc"]
    assert all(r7["professions"][g] for g in ("woman", "man"))
    assert {"original", "top-2", "top-18"} <= set(r7["table_13"])


def test_book_in_a_real_browser(smoke_book):
    """Headless Chromium loads the intro, every chapter and the generated pages, finds every image
    and no traceback, and saves a screenshot of each (installs Debian's chromium when missing)."""
    from cna_utils.publish import browser_check
    shots = smoke_book / "_build" / "screenshots"
    assert browser_check.main([str(smoke_book / "_build" / "html"), "--screenshots", str(shots)]) == 0
    pages = browser_check.pages(smoke_book / "_build" / "html")
    # intro, chapters, the division study's chapters, the second model's, scoreboard, performance, models
    assert len(pages) == 1 + len(NOTEBOOKS) + len(DIVISION_CHAPTERS) + len(SECOND_CHAPTERS) + 3
    models = next(p for p in pages if p.stem == "models").read_text()
    assert WEIGHTS["qwen2.5-coder-1.5b"]["sha256"] in models and "<table" in models   # the exact weights, as tables
    html = smoke_book / "_build" / "html"
    assert all((shots / f"{browser_check.shot_name(html, p)}.png").stat().st_size > 10_000 for p in pages)
    assert len({browser_check.shot_name(html, p) for p in pages}) == len(pages)     # no screenshot overwrites another


def test_scoreboard_lists_every_paper_item(smoke_book):
    page = (smoke_book / "book" / "_generated" / "scoreboard.md").read_text()
    for item in [f"Table {i}" for i in list(range(1, 14)) + list(range(15, 28)) if i != 14] + ["Figure 2"]:
        assert f"## {item}: " in page, item
    assert "**not run**" not in page and "no measures in the results file" not in page
    assert "rule `table_5.mask`: replicates if the 95% interval" in page      # the rules are shown, not hidden
    for name in ("01_arithmetic_heads", "02_cna", "05_lora", "07_gender_bias"):
        r = json.loads((smoke_book / "book" / "results" / f"{name}.json").read_text())
        assert r["verdicts"] and all({"n", "interval", "threshold", "rule_id", "verdict"} <= set(v) for v in r["verdicts"])
        key = lambda vs: [(v["rule_id"], v["verdict"], v["n"]) for v in vs]
        assert key(r["verdicts"]) == key(claims.verdicts(r, name))    # the file's verdicts are the rules on its measures


def test_division_study_runs_chapters_2_to_4_again(smoke_book):
    """Chapters 2-4 run a second time with OP="/": 1D/ cases, the division head, Tables 15-17."""
    html = smoke_book / "_build" / "html" / "book" / "chapters"
    heads = set()
    for stem, item in (("02_cna", "table_15"), ("03_prediction_enhancing_dag", "table_16"),
                       ("04_hidden_interpretable_neurons", "table_17")):
        r = json.loads((smoke_book / "book" / "results" / f"{stem}_division.json").read_text())
        assert r["op"] == "/" and "/" in r["case"]["prompt"]
        assert {v["item"] for v in r["verdicts"]} == {item}
        heads.add(r["head"])
        page = html / f"{stem}_division.html"
        assert page.exists() and "Traceback" not in page.read_text()
    from cna_utils.paper.study import chapter1_head
    head, note = chapter1_head(smoke_book / "book" / "results", "/")
    assert heads == {head} and (head.split("_")[0] != "0" or "no ranked head lies above layer 0" in note)
    board = (smoke_book / "book" / "_generated" / "scoreboard.md").read_text()
    assert "02_cna_division" in board


def test_second_model_pages_and_scoreboard_rows(smoke_book):
    """Chapters 1-4 have second-model pages (here the main run's: the smoke build's two models are one),
    and the scoreboard fills Tables 18-21 from their Table 1/5/6/8 verdicts beside GPT-J's numbers."""
    html = smoke_book / "_build" / "html" / "book" / "chapters" / "second"
    for nb in NOTEBOOKS:
        if nb.name[:2] in SECOND_CHAPTERS:
            page = (html / f"{nb.stem}.html").read_text()
            assert "Appendix C" in page and "repeats chapter" in page and "Traceback" not in page
            r = json.loads((smoke_book / "book" / "results" / "second" / f"{nb.stem}.json").read_text())
            assert r["second_model_is_main_model"] is True
    board = (smoke_book / "book" / "_generated" / "scoreboard.md").read_text()
    sections = dict(part.split("\n", 1) for part in board.split("\n## ")[1:])
    t18 = next(v for k, v in sections.items() if k.startswith("Table 18"))
    assert "the paper's numbers are GPT-J's" in t18 and "| 10.9 points |" in t18      # 74.5% -> 63.6% with head 7_0
    t19 = next(v for k, v in sections.items() if k.startswith("Table 19"))
    assert "| 58.4% |" in t19 and "| 37.5% |" in t19 and "| 17.0% |" in t19
    for key in ("Table 18", "Table 19", "Table 20", "Table 21"):
        body = next(v for k, v in sections.items() if k.startswith(key))
        assert "second/0" in body and "**not run**" not in body, body


def test_scoreboard_judges_second_model_measures_against_gpt_j(tmp_path):
    from cna_utils.paper.measures import as_dicts
    from cna_utils.publish.scoreboard import scoreboard_markdown
    from cna_utils.measure.stats import Measure, proportion
    (tmp_path / "second").mkdir()
    ms = as_dicts(dict(mask_top99=proportion([True] * 40 + [False] * 10), keep_top99=proportion([True] * 5 + [False] * 45),
                       coef_top99=Measure(30, 50, (25, 35)), answer_neurons_top3=Measure.exact(2, 3),
                       score_effect_spearman=Measure(0.5, 10, (0.45, 0.55))))
    (tmp_path / "second" / "02_cna.json").write_text(json.dumps(dict(model="m2", profile="book", measures=ms)))
    (tmp_path / "02_cna.json").write_text(json.dumps(dict(model="m1", profile="book")))
    board = scoreboard_markdown(tmp_path)
    t19 = board.split("## Table 19")[1].split("\n## ")[0]
    # mask 80% [67, 89] against GPT-J's 58.4% (replicates at >= 43.4); against Llama's 100% it would be partly
    assert "| 80.0% [67.0%, 88.8%] (n=50) | **replicates** |" in t19 and "second/02_cna.ipynb#table-5" in t19
    assert "no measures in the results file" in board.split("## Table 5")[1].split("\n## ")[0]
    assert "**not run**" in board.split("## Table 18")[1].split("\n## ")[0]
    assert "chapters 1-4 run again on m2" in board


def test_browser_check_sees_unrendered_and_truncated_tables():
    from cna_utils.publish.browser_check import text_problems
    raw = "<p>| claim | this run |</p><p>|---|---|</p>"
    assert "raw markdown table" in text_problems(raw)[0]
    assert text_problems("<pre>| a | b |\n|---|---|</pre><table><tr><td>1</td></tr></table>") == []
    cut = "<table><tr><td>1</td><td>...</td><td>3</td></tr></table><p>12 rows × 22 columns</p>"
    assert "truncated table" in text_problems(cut)[0]
    assert text_problems("<table><tr><td>1</td></tr></table><p>12 rows × 22 columns</p>") == []


def test_every_badge_and_install_line_names_the_configured_repository(tmp_path):
    import re

    from cna_utils.publish.book import repository_files, repository_url, set_repository
    url = repository_url(ROOT)
    path = url.split("github.com/")[1]
    for f in repository_files(ROOT)[1:]:
        text = f.read_text()
        named = set(re.findall(r"github\.com/([\w.-]+/[\w.-]+?)(?:/|\"|\\|\)|$)", text))
        assert named == {path}, (f.name, named)
        assert f"colab.research.google.com/github/{path}/blob/main/notebooks/{f.name}" in text
        assert f'"cna_utils @ git+{url}' in text.replace('\\"', '"')
    shutil.copy(ROOT / "_config.yml", tmp_path / "_config.yml")
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks")
    changed = set_repository(tmp_path, "https://github.com/someone/fork")
    assert len(changed) == 1 + len(NOTEBOOKS) and repository_url(tmp_path) == "https://github.com/someone/fork"
    assert not any(path in f.read_text() for f in changed)
    with pytest.raises(ValueError, match="OWNER/NAME"):
        set_repository(tmp_path, "github.com/x")


def test_browser_check_sees_untypeset_math_and_broken_links(tmp_path):
    from cna_utils.publish.browser_check import link_problems, math_problems
    assert "not typeset" in math_problems('<span class="math notranslate nohighlight">\\(a_k\\)</span>')[0]
    assert math_problems('<span class="math notranslate"><mjx-container jax="CHTML"></mjx-container></span>') == []
    assert math_problems("<p>no math</p>") == []
    (tmp_path / "other.html").write_text('<h2 id="sec">Sec</h2>')
    page = tmp_path / "page.html"
    dom = ('<a href="other.html#sec">ok</a><a href="https://example.org/x">out</a><a href="#top">top</a>'
           '<a href="missing.html">gone</a><a href="other.html#nope">bad anchor</a><p id="top"></p>'
           '<script>var t=\'<a href=")}):b;n.x">\';</script>')
    page.write_text(dom)
    found = link_problems(dom, page)
    assert len(found) == 2 and "missing.html is not in the build" in found[0] and "no section #nope" in found[1]


def test_browser_check_measures_code_cut_at_the_column_edge(tmp_path):
    """A code line wider than its column is reported with the start of the line; the book's
    stylesheet wraps it instead."""
    from cna_utils.publish.browser_check import find_chromium, page_layout
    long = "x = " + " + ".join(f"value_{i}" for i in range(40))
    page = tmp_path / "page.html"
    cell = f'<div class="cell_input" style="width: 300px"><pre>{long}</pre></div>'
    page.write_text(f"<html><head><title>t</title></head><body>{cell}</body></html>")
    binary = find_chromium()
    height, cut = page_layout(binary, page)
    assert height and cut == [long[:60]]
    css = (ROOT / "_static" / "book.css").read_text()
    page.write_text(f"<html><head><title>t</title><style>{css}</style></head><body>{cell}</body></html>")
    assert page_layout(binary, page)[1] == []


def test_browser_check_wants_alt_text_or_a_caption():
    from cna_utils.publish.browser_check import image_text_problems
    assert image_text_problems('<img src="a.png" alt="Heat map of drops">') == []
    assert image_text_problems('<figure><img src="a.png"><figcaption>Fig. 1 drops</figcaption></figure>') == []
    assert "without alt text" in image_text_problems('<p><img src="a.png" alt=""></p>')[0]
    assert len(image_text_problems('<figure><img src="a.png"></figure><img src="b.png">')) == 2


def test_second_part_alone_with_the_main_model_says_to_run_the_main_part_first(tmp_path):
    """The appendix on the main model copies the main chapters: asked for alone before they exist, it
    stops at once with what to do (nothing has been executed)."""
    (tmp_path / "notebooks").mkdir()
    shutil.copy(NOTEBOOKS[0], tmp_path / "notebooks" / NOTEBOOKS[0].name)
    with pytest.raises(FileNotFoundError, match="run the 'main' part first"):
        execute_notebooks(tmp_path, "smoke", "smollm2-135m", second_model="smollm2-135m", parts=("second",))
    assert not list((tmp_path / "book" / "chapters").glob("*.ipynb"))


def test_a_hung_chromium_is_killed_and_run_again(tmp_path):
    """Chromium now and then hangs after its work: the check kills it (children too), runs it again,
    and a run that hangs every time comes back as exit 124 for the page's report, not an exception."""
    from cna_utils.publish.browser_check import _chromium
    fake = tmp_path / "chromium"
    marker = tmp_path / "ran-once"
    fake.write_text(f"#!/bin/sh\nif [ -e {marker} ]; then echo '<body>ok</body>'; exit 0; fi\n"
                    f"touch {marker}\nsleep 60 &\nwait\n")
    fake.chmod(0o755)
    run = _chromium(str(fake), "--dump-dom", "x", timeout=2)
    assert run.returncode == 0 and "<body>ok" in run.stdout
    always = tmp_path / "hangs"
    always.write_text("#!/bin/sh\nsleep 60 &\nwait\n")
    always.chmod(0o755)
    run = _chromium(str(always), "--dump-dom", "x", timeout=1, tries=2)
    assert run.returncode == 124 and "2 times" in run.stderr


def test_a_rebuild_with_nothing_changed_executes_no_chapter(smoke_book, tmp_path):
    """The smoke build again on its own chapter store: every chapter is reused, and its page and
    results file are those of the run (the store is the fixture's, beside the book's root)."""
    store = next(p for p in smoke_book.parent.glob("store*") if (p / "entries").is_dir())
    page = (smoke_book / "book" / "chapters" / "03_prediction_enhancing_dag.ipynb").read_text()
    out = subprocess.run([sys.executable, "-m", "cna_utils.publish.book", "--profile", "smoke", "--model",
                          "smollm2-135m", "--second-model", "smollm2-135m", "--root", str(smoke_book), "--store",
                          str(store), "--no-build"], check=True, capture_output=True, text=True).stdout
    assert "executing" not in out and out.count(": reused") == len(NOTEBOOKS) + len(DIVISION_CHAPTERS), out
    again = json.loads((smoke_book / "book" / "chapters" / "03_prediction_enhancing_dag.ipynb").read_text())
    assert [c.get("outputs") for c in again["cells"]] == [c.get("outputs") for c in json.loads(page)["cells"]]

