"""Execute the notebooks with papermill and build the HTML book.

Usage (what ``make book`` runs)::

    python -m cna_utils.publish.book --profile book --model qwen2.5-coder-0.5b --second-model smollm2-135m
    python -m cna_utils.publish.book --profile smoke --model smollm2-135m --second-model smollm2-135m \
        --root /tmp/copy-of-the-book                                         # what the tests run
    python -m cna_utils.publish.book --part division --no-build             # only the division study

Each ``notebooks/NN_name.ipynb`` is executed into ``book/chapters/NN_name.ipynb`` (git-ignored)
with the parameters PROFILE, MODEL and RESULTS_DIR (``book/results``); chapters 2-4 run once more
with OP="/" (the division study) into ``NN_name_division.ipynb``; chapters 1-4 run once more on the
second model (the paper's Appendix C) into ``book/chapters/second/`` with their results under
``book/results/second/``. When the second model is the main model (the smoke build), its pages are
the main run's pages, said so on each page, instead of a second identical run. Chapters that fail
stop the build. A chapter whose inputs did not change since a stored run is not executed again: its
stored outputs go into the notebook as it is now (``chapter_store``; ``--force`` executes all). Then ``jupyter-book build`` runs with warnings as errors into ``_build/html``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from cna_utils.publish.chapter_store import chapter_key, ChapterStore

__all__ = ["execute_notebooks", "write_pages", "build_html", "main", "repository_url", "set_repository",
           "DIVISION_CHAPTERS", "SECOND_CHAPTERS", "PARTS",
           "MAIN_MODEL", "SECOND_MODEL"]

MAIN_MODEL = "qwen2.5-coder-0.5b"      # the model of `make book` (README: why this one)
SECOND_MODEL = "smollm2-135m"          # the paper's Appendix C: the findings on a second model

# Chapters run a second time with OP="/" (the paper's Appendix B, Tables 15-17), after the others,
# into book/chapters/NN_name_division.ipynb.
DIVISION_CHAPTERS = ("02", "03", "04")
# Chapters run on the second model (the paper's Appendix C, Tables 18-21), into book/chapters/second/.
SECOND_CHAPTERS = ("01", "02", "03", "04")
SECOND = "second"


def _second_banner(model: str, second: str, profile: str, stem: str, copied: bool) -> str:
    chapter = int(stem[:2])
    if copied:
        return (f"**This page is the second-model appendix (the paper's Appendix C).** In this build the second "
                f"model is the main model ({model}, profile {profile}), so the page repeats chapter {chapter}'s run "
                f"instead of running it twice. Run the book with another `--second-model` for a second model's "
                f"numbers.")
    return (f"**This page is the second-model appendix (the paper's Appendix C).** The paper repeats its analyses "
            f"on GPT-J (Tables 18-21); this page runs chapter {chapter} on {second} (profile {profile}), a model "
            f"of another family and size than the book's main model ({model}). The prose is chapter {chapter}'s; "
            f"every number and verdict on the page is the second model's.")


def _finish_page(path: Path, banner: str | None = None, label_suffix: str = "") -> None:
    """One pass over an executed chapter: papermill's injected-parameters cell (it holds machine
    paths) is kept out of the page; ``banner`` opens the page after its title; a second run of a
    chapter gets its own figure labels (labels are unique across the book): every figure name in
    the cells' mystnb metadata and every {numref} to it get ``label_suffix``."""
    import re

    import nbformat
    nb = nbformat.read(path, as_version=4)
    names = set()
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            cell.metadata["tags"] = tags + ["remove-cell"]
        fig = cell.metadata.get("mystnb", {}).get("figure", {})
        if label_suffix and "name" in fig:
            names.add(fig["name"])
            fig["name"] += label_suffix
    for cell in nb.cells:
        if names and cell.cell_type == "markdown":
            cell.source = re.sub(r"\{numref\}`([^`<]+)`", lambda m: "{numref}`" + m.group(1) + label_suffix + "`"
                                 if m.group(1) in names else m.group(0), cell.source)
    if banner:
        nb.cells.insert(1 if nb.cells and nb.cells[0].cell_type == "markdown" else 0,
                        nbformat.v4.new_markdown_cell(banner))
    nbformat.write(nb, path)


def _second_placeholders(src: list[Path], folder: Path) -> None:
    """Pages that say the second-model appendix was not run (the table of contents lists them)."""
    import nbformat
    folder.mkdir(parents=True, exist_ok=True)
    for nb in src:
        if nb.name[:2] in SECOND_CHAPTERS and not (folder / nb.name).exists():
            title = nbformat.read(nb, as_version=4).cells[0].source.splitlines()[0]
            text = (f"{title} (second model)\n\nNot run in this build (`--second-model none`). "
                    f"`make book SECOND_MODEL={SECOND_MODEL}` runs this chapter on a second model.")
            nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(text)]), folder / nb.name)


PARTS = ("main", "division", "second")


def _run(nb: Path, page: Path, res: Path, params: dict, shown: str, store, force: bool) -> None:
    """Execute ``nb`` into ``page`` with papermill, or reuse the ``store``'s run when its inputs have
    not changed (``chapter_store``); say which, and why a chapter executes."""
    import papermill as pm
    t = time.time()
    what = f"profile={params['PROFILE']}, model={params['MODEL']}"
    slot = f"{shown}|{params['PROFILE']}|{params['MODEL']}"
    key = chapter_key(nb, params, res) if store is not None else None
    hit, why = store.lookup(slot, key) if store is not None else (None, "no store")
    if hit is not None and not force:
        store.restore(hit, nb, page, res)
        print(f"{shown}: reused ({what})", flush=True)
        return
    print(f"executing {shown} ({what}; {'forced' if force else why})", flush=True)
    page.parent.mkdir(parents=True, exist_ok=True)
    before = _results_state(res)
    pm.execute_notebook(str(nb), str(page), cwd=str(page.parent), progress_bar=False, parameters=params)
    if store is not None:
        store.save(slot, key, page, [f for f, st in _results_state(res).items() if before.get(f) != st])
    print(f"  {page.name}: executed in {time.time() - t:.0f} s", flush=True)


def _results_state(folder: Path) -> dict[Path, tuple[int, int]]:
    """The results files of ``folder`` (not its caches) with their modification time and size."""
    return {f: (f.stat().st_mtime_ns, f.stat().st_size) for f in sorted(Path(folder).glob("*.json"))}


def execute_notebooks(root: Path, profile: str, model: str, only: list[str] | None = None,
                      second_model: str | None = None, parts: tuple[str, ...] = PARTS,
                      store: ChapterStore | None = None, force: bool = False) -> list[Path]:
    """Execute the chapters (``only``: name prefixes) of the book's ``parts``: "main" (every chapter
    on ``model``), "division" (chapters 2-4 with OP="/") and "second" (chapters 1-4 on ``second_model``).
    With a ``store`` a chapter whose inputs have not changed is reused from it instead (``force``:
    execute every chapter all the same, and store the new runs)."""

    from cna_utils.paper.study import study_results_name
    from cna_utils.store.profiles import get_profile
    get_profile(profile)                          # fail early on an unknown profile
    src = sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if only:
        src = [p for p in src if any(p.name.startswith(o) for o in only)]
    if not src:
        raise FileNotFoundError(f"no notebooks to execute under {root / 'notebooks'}")
    os.environ.setdefault("TQDM_DISABLE", "1")         # the kernels inherit it: no progress bars in the pages
    out_dir, results = root / "book" / "chapters", root / "book" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown part(s) {sorted(unknown)}: choose from {', '.join(PARTS)}")
    runs = [(nb, out_dir, nb.name, results, model, {}) for nb in src if "main" in parts]
    runs += [(nb, out_dir, study_results_name(nb.stem, "/") + ".ipynb", results, model, dict(OP="/")) for nb in src
             if nb.name[:2] in DIVISION_CHAPTERS and "division" in parts]
    second = [nb for nb in src if second_model and nb.name[:2] in SECOND_CHAPTERS and "second" in parts]
    copied = second_model == model
    missing = [nb.name for nb in second if copied and "main" not in parts and not (out_dir / nb.name).exists()]
    if missing:
        raise FileNotFoundError(
            f"the second model is the main model ({model}), so the appendix copies the main chapters, but "
            f"{', '.join(missing)} have not been executed under {out_dir}: run the 'main' part first "
            "(or name another --second-model)")
    if second and not copied:
        runs += [(nb, out_dir / SECOND, nb.name, results / SECOND, second_model, {}) for nb in second]
    done = []
    for nb, out, name, res, m, extra in runs:
        params = dict(PROFILE=profile, MODEL=m, RESULTS_DIR=str(res.resolve()), **extra)
        _run(nb, out / name, res, params, str((out / name).relative_to(out_dir.parent)), store, force)
        if out.name == SECOND:
            _finish_page(out / name, _second_banner(model, m, profile, name, copied=False), "-second")
        else:
            _finish_page(out / name, label_suffix="-division" if extra else "")
        done.append(out / name)
    if not second_model:
        _second_placeholders(src, out_dir / SECOND)
    if second and copied:
        (out_dir / SECOND).mkdir(exist_ok=True)
        (results / SECOND).mkdir(exist_ok=True)
        for nb in second:
            shutil.copy(out_dir / nb.name, out_dir / SECOND / nb.name)
            _finish_page(out_dir / SECOND / nb.name, _second_banner(model, model, profile, nb.name, copied=True),
                         "-second")
            r = json.loads((results / f"{nb.stem}.json").read_text())
            r["second_model_is_main_model"] = True
            (results / SECOND / f"{nb.stem}.json").write_text(json.dumps(r, indent=2))
            done.append(out_dir / SECOND / nb.name)
    return done


def write_pages(root: Path) -> None:
    """The generated pages: the replication scoreboard (from the chapters' results files), the
    performance page and the models page (from the benchmark results), under book/_generated/."""
    from cna_utils.publish.models_page import write_models_page
    from cna_utils.publish.perf_page import write_performance
    from cna_utils.publish.scoreboard import write_scoreboard

    out = root / "book" / "_generated"
    out.mkdir(parents=True, exist_ok=True)
    write_scoreboard(root / "book" / "results", out / "scoreboard.md")
    write_performance(root / "bench" / "results", out)
    write_models_page(root / "bench" / "results", out / "models.md")


def repository_url(root: Path) -> str:
    """The repository URL: ``repository.url`` in _config.yml, the one place it is set."""
    import yaml
    return yaml.safe_load((root / "_config.yml").read_text())["repository"]["url"].rstrip("/")


def repository_files(root: Path) -> list[Path]:
    """The files that name the repository: _config.yml and every notebook (Colab badge, install line)."""
    return [root / "_config.yml"] + sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def set_repository(root: Path, url: str) -> list[Path]:
    """Point every badge, button and install line at ``url`` (a fork, say): rewrites the files of
    ``repository_files`` where they name the current ``repository_url``."""
    import re
    if not re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url.rstrip("/")):
        raise ValueError(f"give the repository as https://github.com/OWNER/NAME, got {url!r}")
    old, url = repository_url(root), url.rstrip("/")
    old_path, new_path = old.split("github.com/")[1], url.split("github.com/")[1]
    changed = []
    for f in repository_files(root):
        text = f.read_text()
        new = text.replace(old, url).replace(f"colab.research.google.com/github/{old_path}/",
                                              f"colab.research.google.com/github/{new_path}/")
        if new != text:
            f.write_text(new)
            changed.append(f)
    return changed


def build_html(root: Path) -> None:
    write_pages(root)
    cmd = [sys.executable, "-m", "jupyter_book", "build", str(root), "-W", "-n", "--keep-going"]
    jb = Path(sys.executable).with_name("jupyter-book")
    if jb.exists():
        cmd = [str(jb), "build", str(root), "-W", "-n", "--keep-going"]
    subprocess.run(cmd, check=True)
    print(f"book written to {root / '_build' / 'html' / 'index.html'}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="book", help="smoke | book | paper")
    ap.add_argument("--model", default=MAIN_MODEL, help="built-in name, local path or Hugging Face id")
    ap.add_argument("--second-model", default=SECOND_MODEL,
                    help="the model of the second-model appendix (chapters 1-4 again); 'none' skips it")
    ap.add_argument("--root", default=".", help="the book's root folder (holds _config.yml)")
    ap.add_argument("--only", nargs="*", help="notebook name prefixes to execute, e.g. 01")
    ap.add_argument("--part", nargs="*", choices=PARTS, default=list(PARTS),
                    help="which runs to execute: main (every chapter), division (chapters 2-4, OP='/'), "
                         "second (chapters 1-4 on the second model); default all")
    ap.add_argument("--store", default=None,
                    help="the chapter store: a chapter whose inputs did not change is reused from it (default "
                         "$CNA_CHAPTER_STORE or ~/.cache/cna_utils/chapters; 'none': execute every chapter)")
    ap.add_argument("--force", action="store_true", help="execute every chapter even when the store has it")
    ap.add_argument("--no-execute", action="store_true", help="only build the HTML from executed chapters")
    ap.add_argument("--no-build", action="store_true", help="execute the chapters, do not build the HTML")
    ap.add_argument("--set-repository", metavar="URL",
                    help="point every badge, button and install line at URL (https://github.com/OWNER/NAME) and stop")
    args = ap.parse_args(argv)
    root = Path(args.root).resolve()
    if args.set_repository:
        for f in set_repository(root, args.set_repository):
            print(f"rewrote {f.relative_to(root)}")
        return
    if not args.no_execute:
        second = None if args.second_model in ("", "none") else args.second_model
        store = None if args.store == "none" else ChapterStore(args.store)
        execute_notebooks(root, args.profile, args.model, args.only, second, tuple(args.part), store, args.force)
    if not args.no_build:
        build_html(root)


if __name__ == "__main__":
    main()
