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
    from cna_utils.paper.measures import as_dicts
    from cna_utils.measure.stats import Measure, proportion
    run = dict(model="m", profile="book", code_commit="abc1234", date="2026-11-22T00:00:00+00:00", seconds=90.0,
               torch_threads=2, weights=None)
    ms = as_dicts(dict(mask_top99=proportion([True] * 33 + [False] * 15), keep_top99=proportion([True] * 30 + [False] * 18),
                       coef_top99=Measure(71.8, 48, (65.0, 78.0)), answer_neurons_top3=Measure.exact(3, 3),
                       score_effect_spearman=Measure(0.5, 10, (0.3, 0.6))))
    build = tmp_path / "build"
    (build / "second").mkdir(parents=True)
    held = dict(head="16_8", table_5={})                         # what the schema asks of a chapter 2 file
    (build / "02_cna.json").write_text(json.dumps(dict(model="m", profile="book", run=run, measures=ms, **held)))
    (build / "second" / "02_cna.json").write_text(json.dumps(dict(model="s", profile="book", run=dict(run, model="s"),
                                                                  measures=ms, **held)))
    dest = findings.save_run(build, tmp_path / "results")
    assert dest == tmp_path / "results" / "m" / "book" and (dest / "second" / "02_cna.json").exists()
    table = findings.findings_markdown(dest)
    mask = "zeroing each case's top-99 CNA neurons removes the answer (mask: share of correct cases lost)"
    assert f"| Table 5 | {mask} | 100.0% | 68.8% [54.7%, 80.1%] (n=48) | partly |" in table
    assert f"| Table 19 | {mask} | 58.4% | 68.8% [54.7%, 80.1%] (n=48) | replicates |" in table    # GPT-J's number
    assert "| Table 5 | keeping only" in table and "| Table 4 |" in table       # every claim, not the first per item
    assert "| beyond the paper |" in table and "claims (" in table and "inconclusive: 1" in table
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


def test_interactive_figure_titles_wrap_to_the_text_column():
    """plotly cuts a title wider than the figure off: long titles break into lines, and the figure
    grows by the lines it added (a short title is left as it is)."""
    import pandas as pd

    from cna_utils.publish import interactive

    summary = pd.DataFrame({"layer": [0, 1], "head": [0, 1], "op": ["+", "+"], "drop": [0.1, -0.2]})
    long = "Drop in mean log p(first answer token) when one head is zeroed, screen set (16 cases per operation)"
    fig = interactive.head_heatmaps(summary, (2, 2), title=long)
    lines = fig.layout.title.text.split("<br>")
    assert len(lines) == 2 and all(len(x) <= interactive.TITLE_CHARS for x in lines)
    assert " ".join(lines) == long
    short = interactive.head_heatmaps(summary, (2, 2), title="Accuracy drop")
    assert short.layout.title.text == "Accuracy drop" and fig.layout.height == short.layout.height + 20
    top = pd.DataFrame({"layer": [3], "score": [1.5], "name": ["3_7"]})
    assert "<br>" in interactive.cna_scores(top, title=long).layout.title.text
