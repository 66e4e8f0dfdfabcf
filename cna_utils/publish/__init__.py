"""The book around the method: running the chapters, their pages and figures, the scoreboard of
paper claims, the findings table, the performance and models pages, the student version and the
browser check. It imports the science part (``cna_utils``); nothing there imports it.

In a chapter::

    from cna_utils import publish as pub
    ch = pub.open_chapter("ch2", PROFILE, MODEL, DEVICE, RESULTS_DIR, SEED)
    verdicts = pub.show_verdicts(measures, "02_cna")     # claims.yaml's rules on this run's measures

Modules: ``book`` (``python -m cna_utils.publish.book``: execute the chapters, build the HTML),
``chapter`` (``open_chapter``: seed, profile, model, results file), ``plots`` (the chapters'
figures), ``scoreboard`` (claims and verdicts, the scoreboard page), ``findings`` (the README and
intro table), ``perf_page`` and ``models_page`` (pages from ``bench/results``), ``student`` (the
version without solutions), ``browser_check`` (headless-browser checks of the built pages).
"""
from cna_utils.publish import prose
from cna_utils.publish.chapter import Chapter, glue_all, open_chapter
from cna_utils.publish.scoreboard import show_verdicts, verdict_markdown

__all__ = ["Chapter", "glue_all", "open_chapter", "prose", "show_verdicts", "verdict_markdown"]
