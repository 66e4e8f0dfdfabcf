"""Execute the notebooks with papermill and build the HTML book.

Usage (what ``make book`` runs)::

    python -m cna_utils.book --profile book --model smollm2-135m
    python -m cna_utils.book --profile smoke --root /tmp/copy-of-the-book   # what the tests run

Each ``notebooks/NN_name.ipynb`` is executed into ``book/chapters/NN_name.ipynb`` (git-ignored)
with the parameters PROFILE, MODEL and RESULTS_DIR (``book/results``); chapters 2-4 run once more
with OP="/" (the division study) into ``NN_name_division.ipynb``; chapters that fail stop the
build. Then ``jupyter-book build`` runs with warnings as errors into ``_build/html``.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["execute_notebooks", "write_pages", "build_html", "main", "DIVISION_CHAPTERS"]

# Chapters run a second time with OP="/" (the paper's Appendix B, Tables 15-17), after the others,
# into book/chapters/NN_name_division.ipynb.
DIVISION_CHAPTERS = ("02", "03", "04")


def execute_notebooks(root: Path, profile: str, model: str, only: list[str] | None = None) -> list[Path]:
    import papermill as pm

    from .analysis import study_results_name
    from .profiles import get_profile
    get_profile(profile)                          # fail early on an unknown profile
    src = sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if only:
        src = [p for p in src if any(p.name.startswith(o) for o in only)]
    if not src:
        raise FileNotFoundError(f"no notebooks to execute under {root / 'notebooks'}")
    os.environ.setdefault("TQDM_DISABLE", "1")         # the kernels inherit it: no progress bars in the pages
    out_dir, results = root / "book" / "chapters", root / "book" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = [(nb, nb.name, {}) for nb in src]
    runs += [(nb, study_results_name(nb.stem, "/") + ".ipynb", dict(OP="/")) for nb in src
             if nb.name[:2] in DIVISION_CHAPTERS]
    done = []
    for nb, name, extra in runs:
        t = time.time()
        print(f"executing {name} (profile={profile}, model={model})", flush=True)
        pm.execute_notebook(str(nb), str(out_dir / name), cwd=str(out_dir), progress_bar=False,
                            parameters=dict(PROFILE=profile, MODEL=model, RESULTS_DIR=str(results.resolve()), **extra))
        print(f"  {name}: {time.time() - t:.0f} s", flush=True)
        _hide_injected_parameters(out_dir / name)
        done.append(out_dir / name)
    return done


def _hide_injected_parameters(path: Path) -> None:
    """Keep papermill's injected-parameters cell (it holds machine paths) out of the page."""
    import nbformat
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            cell.metadata["tags"] = tags + ["remove-cell"]
    nbformat.write(nb, path)


def write_pages(root: Path) -> None:
    """The generated pages: the replication scoreboard (from the chapters' results files), the
    performance page and the models page (from the benchmark results), under book/_generated/."""
    from .models_page import write_models_page
    from .perf_page import write_performance
    from .scoreboard import write_scoreboard

    out = root / "book" / "_generated"
    out.mkdir(parents=True, exist_ok=True)
    write_scoreboard(root / "book" / "results", out / "scoreboard.md")
    write_performance(root / "bench" / "results", out)
    write_models_page(root / "bench" / "results", out / "models.md")


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
    ap.add_argument("--model", default="smollm2-135m", help="built-in name, local path or Hugging Face id")
    ap.add_argument("--root", default=".", help="the book's root folder (holds _config.yml)")
    ap.add_argument("--only", nargs="*", help="notebook name prefixes to execute, e.g. 01")
    ap.add_argument("--no-execute", action="store_true", help="only build the HTML from executed chapters")
    args = ap.parse_args(argv)
    root = Path(args.root).resolve()
    if not args.no_execute:
        execute_notebooks(root, args.profile, args.model, args.only)
    build_html(root)


if __name__ == "__main__":
    main()
