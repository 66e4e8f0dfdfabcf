"""Which library code a result depends on, and a digest of it.

Usage::

    files = module_files(["cna_utils.paper.study"])       # study.py, the modules it imports, theirs, ...
    digest = code_digest("cna_utils.paper.study")         # changes when any of them changes what it does

``module_files`` follows ``import`` and ``from ... import`` statements through ``cna_utils`` (read
from the syntax trees, nothing is imported); each package's ``__init__`` is included, since it runs
first. ``code_digest`` hashes those files' syntax trees with docstrings removed, so a comment, a
docstring or a re-wrapped line leaves it unchanged and anything else changes it. The per-unit
caches (``cache.artefact_key``) key on it: a CNA, a sweep layer or a LoRA run saved by other code
is computed again. The chapter store (``publish.chapter_store``) keys on the files' bytes instead,
since a page can show a docstring.
"""
from __future__ import annotations

import ast
import hashlib
from pathlib import Path

__all__ = ["imported_modules", "module_files", "code_digest", "PACKAGE"]

PACKAGE = Path(__file__).resolve().parents[1]          # cna_utils/
_TREES: dict[tuple, str] = {}                           # (path, mtime, size) -> normalised syntax tree


def imported_modules(tree: ast.AST) -> set[str]:
    """The ``cna_utils`` modules a syntax tree imports (``from cna_utils.x import y`` names ``x.y``
    too: it may be a module)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "cna_utils"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "cna_utils":
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def _module_file(name: str, package: Path) -> Path | None:
    base = package.joinpath(*name.split(".")[1:])
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


def module_files(names, package: Path | None = None) -> list[Path]:
    """The source files of the modules ``names`` (dotted ``cna_utils`` names), of the modules they
    import, and so on, with every enclosing package's ``__init__.py``; sorted."""
    package = Path(package) if package is not None else PACKAGE
    todo, seen, files = set(names), set(), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo |= {".".join(parts[:i]) for i in range(1, len(parts))} - seen     # parent packages run first
        f = _module_file(name, package)
        if f is not None:
            files.add(f)
            todo |= imported_modules(ast.parse(f.read_text())) - seen
    return sorted(files)


def _without_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def _normalised(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _TREES:
        _TREES[key] = ast.dump(_without_docstrings(ast.parse(path.read_text())))
    return _TREES[key]


def code_digest(*modules: str, package: Path | None = None) -> str:
    """A SHA-256 of what ``module_files(modules)`` do: their paths (relative to the package) and
    syntax trees without docstrings."""
    package = Path(package) if package is not None else PACKAGE
    h = hashlib.sha256()
    for f in module_files(modules, package):
        h.update(str(f.relative_to(package)).encode() + b"\0" + _normalised(f).encode() + b"\0")
    return h.hexdigest()
