"""The "what we found" tables of the README and the intro agree with the committed results."""
import json

import pytest

from cna_utils.publish import findings


def test_readme_and_intro_tables_match_the_committed_results():
    assert findings.RESULTS.is_dir(), "the last full run's results are committed"
    assert findings.update(check=True) == [], "run `python -m cna_utils.publish.findings` and commit the pages"
    table = findings.findings_markdown()
    for path in findings.PAGES:
        assert table in path.read_text()


def test_the_table_follows_the_results(tmp_path):
    run = dict(model="m", profile="book", code_commit="abc1234", date="2026-11-22T00:00:00+00:00", seconds=90.0,
               torch_threads=2, weights=None)
    verdicts = [dict(item="table_5", claim="mask removes the answer (100%)", paper="", this_run="68.8%",
                     verdict="partly"),
                dict(item="table_5", claim="coef", paper="", this_run="71.8%", verdict="replicates")]
    build = tmp_path / "build"
    (build / "second").mkdir(parents=True)
    (build / "02_cna.json").write_text(json.dumps(dict(model="m", profile="book", run=run, verdicts=verdicts)))
    (build / "second" / "02_cna.json").write_text(json.dumps(dict(model="s", profile="book", run=dict(run, model="s"),
                                                                  verdicts=verdicts)))
    dest = findings.save_run(build, tmp_path / "results")
    assert dest == tmp_path / "results" / "m" / "book" and (dest / "second" / "02_cna.json").exists()
    table = findings.findings_markdown(dest)
    assert "| Table 5 | mask removes the answer (100%) | 68.8% | partly |" in table
    assert "| Table 19 | GPT-J: top-99" in table and "s: 68.8%" in table
    assert "ch2 1.5, C.2 1.5; 3 min in all" in table and "second model s" in table
    page = tmp_path / "README.md"
    page.write_text(f"intro\n{findings.BEGIN}\nold\n{findings.END}\nrest\n")
    assert findings.update(dest, [page], check=True) == [page] and "old" in page.read_text()
    findings.update(dest, [page])
    assert page.read_text() == f"intro\n{findings.BEGIN}\n{table}\n{findings.END}\nrest\n"
    assert findings.update(dest, [page], check=True) == []


def test_a_page_without_the_block_gets_a_clear_error(tmp_path):
    page = tmp_path / "README.md"
    page.write_text("no block here\n")
    with pytest.raises(ValueError, match="has no findings block"):
        findings.update(findings.RESULTS, [page])
