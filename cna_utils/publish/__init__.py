"""The book around the method: running the chapters, their pages and figures, the scoreboard of
paper claims, the findings table, the performance and models pages, the student version and the
browser check. It imports the science part (``cna_utils``); nothing there imports it. Like every
room, the package exports nothing: each name is imported from the module that defines it.

In a chapter::

    from cna_utils.publish import chapter, prose, scoreboard
    ch = chapter.open_chapter("ch2", PROFILE, MODEL, DEVICE, RESULTS_DIR, SEED)
    verdicts = scoreboard.show_verdicts(measures, "02_cna")     # claims.yaml's rules on this run's measures

Modules: ``book`` (``python -m cna_utils.publish.book``: execute the chapters, build the HTML),
``chapter_store`` (reuse a chapter whose inputs did not change), ``chapter`` (``open_chapter``:
seed, profile, model, results file), ``plots`` (the chapters' figures), ``interactive`` (plotly),
``scoreboard`` (claims and verdicts, the scoreboard page), ``forest`` (every claim at a glance),
``findings`` (the README and intro table), ``prose`` (finding sentences), ``perf_page`` and
``models_page`` (pages from ``bench/results``), ``student`` (the nbgrader course),
``browser_check`` (headless-browser checks of the built pages).
"""
