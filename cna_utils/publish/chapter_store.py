"""The chapter-level execution cache: a chapter is executed again only when something it depends on changed.

Usage (what ``python -m cna_utils.publish.book`` does for every chapter it runs)::

    store = ChapterStore()                                   # ~/.cache/cna_utils/chapters, or $CNA_CHAPTER_STORE
    key = chapter_key(nb, dict(PROFILE="book", MODEL="qwen2.5-coder-0.5b"), results_dir)
    hit, why = store.lookup(slot, key)                       # the stored run, or None and what changed
    if hit: store.restore(hit, nb, out / nb.name, results_dir)   # the edited notebook with the stored outputs
    else: ...execute...; store.save(slot, key, executed, written)

What a chapter depends on (its key; every part a SHA-256):

* ``code``: its notebook's code cells (source and tags) in order. Markdown is not in the key: a
  prose edit re-renders the page with the stored outputs put into the edited notebook.
* ``library``: every module of ``cna_utils`` the notebook imports, followed through the modules'
  own imports (read from the syntax trees, so a module no chapter imports changes no key), and the
  data files (``*.yaml``) beside each of them.
* ``parameters``: the papermill parameters but the results folder (profile, model, OP, ...).
* ``weights``: a built-in model's SHA-256 (``model/weights.yaml``); another model is keyed by its
  name or path only (``make book FORCE=1`` after changing its files).
* ``packages``: the versions of torch, transformers, peft and papermill.
* ``reads``: the results files of the earlier chapters in its results folder (a division chapter
  also reads the main ones), their volatile keys (dates, seconds) left out and their numbers read
  to 10 significant digits: chapter 3 runs again when chapter 2's numbers change, not when chapter 2
  was only re-rendered or read a cached unit back with its last bit rounded otherwise.

The store is a folder outside the work tree (like the weights), so a fresh clone on the same
machine reuses it: ``entries/<key>/`` holds the executed notebook (before the page is finished)
and the results files the run wrote, ``slots/<slot>.json`` the last key of each chapter run, from
which ``lookup`` says what changed.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
from importlib import metadata
from pathlib import Path

from cna_utils.store.code import imported_modules, module_files

__all__ = ["ChapterStore", "chapter_key", "library_files", "default_store", "PACKAGES"]

PACKAGE = Path(__file__).resolve().parents[1]          # cna_utils/
PACKAGES = ("torch", "transformers", "peft", "papermill")


def default_store() -> Path:
    """``$CNA_CHAPTER_STORE`` or ``~/.cache/cna_utils/chapters``."""
    return Path(os.environ.get("CNA_CHAPTER_STORE", "~/.cache/cna_utils/chapters")).expanduser()


def _sha(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def _notebook_code(nb_path: Path) -> list[dict]:
    cells = json.loads(Path(nb_path).read_text())["cells"]
    return [dict(source="".join(c["source"]), tags=sorted(c.get("metadata", {}).get("tags", [])))
            for c in cells if c["cell_type"] == "code"]


def library_files(nb_path: Path, package: Path = PACKAGE) -> list[Path]:
    """The files of ``package`` a notebook's execution reads: the modules it imports, the modules
    they import (``code.module_files``), and the ``*.yaml`` beside each module."""
    names: set[str] = set()
    for cell in _notebook_code(nb_path):              # shell and magic lines (!pip, %matplotlib) read as pass
        lines = [re.sub(r"^(\s*)[!%].*", r"\1pass", line) for line in cell["source"].splitlines()]
        names |= imported_modules(ast.parse("\n".join(lines)))
    files = set(module_files(names, package))
    for f in list(files):
        files |= set(f.parent.glob("*.yaml"))
    return sorted(files)


def _weights(model: str) -> str:
    from cna_utils.model.weights import WEIGHTS
    if model in WEIGHTS:
        return _sha(json.dumps(WEIGHTS[model], sort_keys=True, default=str))
    return _sha(f"name:{model}")


def _stripped(x):
    from cna_utils.store.results import VOLATILE
    if isinstance(x, dict):
        return {k: _stripped(v) for k, v in x.items() if k not in VOLATILE}
    if isinstance(x, list):
        return [_stripped(v) for v in x]
    if isinstance(x, float):              # 10 significant digits: a cached unit read back is the same number
        return float(f"{x:.10g}")
    return x


def _reads(nb_path: Path, results_dir: Path, division: bool) -> dict[str, str]:
    """Hashes of the results files of the chapters before this one in ``results_dir``."""
    n = int(Path(nb_path).name[:2])
    out = {}
    for p in sorted(Path(results_dir).glob("[0-9][0-9]_*.json")):
        if int(p.name[:2]) < n and (division or not p.stem.endswith("_division")):
            out[p.name] = _sha(json.dumps(_stripped(json.loads(p.read_text())), sort_keys=True))
    return out


def chapter_key(nb_path: Path, parameters: dict, results_dir: Path, package: Path = PACKAGE) -> dict:
    """What a chapter run depends on (see the module docstring): {part: sha256, "files": {library
    file: sha256}, "read": {results file: sha256}}."""
    params = {k: v for k, v in parameters.items() if k != "RESULTS_DIR"}
    files = {str(f.relative_to(package.parent)): _sha(f.read_bytes()) for f in library_files(nb_path, package)}
    reads = _reads(nb_path, results_dir, division=params.get("OP") == "/")
    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            versions[p] = None
    return dict(code=_sha(json.dumps(_notebook_code(nb_path))), library=_sha(json.dumps(files, sort_keys=True)),
                parameters=_sha(json.dumps(params, sort_keys=True, default=str)),
                weights=_weights(str(params.get("MODEL", ""))), packages=_sha(json.dumps(versions, sort_keys=True)),
                reads=_sha(json.dumps(reads, sort_keys=True)), files=files, read=reads)


def _digest(key: dict) -> str:
    return _sha(json.dumps({k: v for k, v in key.items() if k not in ("files", "read")}, sort_keys=True))


def _why(old: dict | None, new: dict) -> str:
    if old is None:
        return "not run before"
    parts = [k for k in ("code", "parameters", "weights", "packages") if old.get(k) != new[k]]
    if old.get("library") != new["library"]:
        a, b = old.get("files", {}), new["files"]
        changed = sorted(f for f in set(a) | set(b) if a.get(f) != b.get(f))
        parts.append("library: " + ", ".join(f.removeprefix("cna_utils/") for f in changed[:3])
                     + (f" and {len(changed) - 3} more" if len(changed) > 3 else ""))
    if old.get("reads") != new["reads"]:
        a, b = old.get("read", {}), new["read"]
        changed = sorted(f for f in set(a) | set(b) if a.get(f) != b.get(f))
        parts.append("earlier results: " + ", ".join(changed))
    return "; ".join(parts) or "its stored run is missing"


class ChapterStore:
    """Executed chapters keyed on what they depend on (``chapter_key``), under ``root``."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_store()

    def _slot(self, slot: str) -> Path:
        return self.root / "slots" / f"{_sha(slot)[:24]}.json"

    def lookup(self, slot: str, key: dict) -> tuple[Path | None, str]:
        """(the stored run of ``key``, "") or (None, what changed since the slot's last run)."""
        entry = self.root / "entries" / _digest(key)
        if (entry / "executed.ipynb").is_file():
            return entry, ""
        last = self._slot(slot)
        return None, _why(json.loads(last.read_text()) if last.is_file() else None, key)

    def save(self, slot: str, key: dict, executed: Path, written: list[Path]) -> Path:
        """Keep an executed notebook (as papermill wrote it) and the results files its run wrote."""
        entry = self.root / "entries" / _digest(key)
        tmp = entry.with_name(entry.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "results").mkdir(parents=True)
        shutil.copy(executed, tmp / "executed.ipynb")
        for f in written:
            shutil.copy(f, tmp / "results" / f.name)
        shutil.rmtree(entry, ignore_errors=True)
        tmp.rename(entry)
        self._slot(slot).parent.mkdir(parents=True, exist_ok=True)
        self._slot(slot).write_text(json.dumps(dict(key, slot=slot, entry=entry.name), indent=1))
        return entry

    def restore(self, entry: Path, nb_path: Path, out: Path, results_dir: Path) -> list[Path]:
        """Write ``out``: the notebook ``nb_path`` as it is now (its prose, cells added or removed
        included) with the stored run's code cells (the same code in the same order, as the key
        says) and papermill's injected-parameters cell after the parameters cell; copy the stored
        results files into ``results_dir``."""
        import nbformat
        done = nbformat.read(entry / "executed.ipynb", as_version=4)
        now = nbformat.read(nb_path, as_version=4)
        injected = [c for c in done.cells if "injected-parameters" in c.metadata.get("tags", [])]
        ran = [c for c in done.cells if c.cell_type == "code" and c not in injected]
        if len(ran) != sum(c.cell_type == "code" for c in now.cells):
            raise ValueError(f"{entry} does not match {nb_path}: its code cells differ (delete the entry)")
        stored = iter(ran)
        cells = []
        for c in now.cells:
            if c.cell_type == "code":
                c = next(stored)
                cells += [c] + (injected if "parameters" in c.metadata.get("tags", []) else [])
            else:
                cells.append(c)
        done.cells = cells
        out.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(done, out)
        Path(results_dir).mkdir(parents=True, exist_ok=True)
        copied = []
        for f in sorted((entry / "results").glob("*.json")):
            shutil.copy(f, Path(results_dir) / f.name)
            copied.append(Path(results_dir) / f.name)
        return copied
