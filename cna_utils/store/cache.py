"""One artefact cache for what long runs save: head sweeps, CNA, the zero-shot search, LoRA runs.

Usage::

    path = artefact_path(cache_dir, "cna", model, head, case_ids, code=__name__)   # None without cache_dir
    res = load_or_compute(path, lambda: compute_it())                     # loads, or computes and saves

Every key starts with the fingerprint of the weights (``weights_fingerprint``: the label and every
parameter's name, shape and sums), so a fine-tuned, pruned or edited model, or one with a LoRA
adapter applied (its weights are parameters too), never loads another model's artefact; then the
digest of the code that computes it (``code``: the module that saves it, whose import closure
``code.code_digest`` hashes), so a unit saved before a change to, say, ``measure/importance.py``
is computed again rather than read back (a docstring or comment edit changes no key); then
whatever else the artefact depends on (cases, head, hyper-parameters, ...). Files are written under
a temporary name and renamed, so an interrupted run never leaves a half-written artefact.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from cna_utils.model.loading import weights_fingerprint
from cna_utils.store.code import code_digest

__all__ = ["artefact_key", "artefact_path", "load_or_compute", "save_atomic"]


def artefact_key(model, *parts, code: str, length: int = 16) -> str:
    """A hex key of the model's weights, the code of the module ``code`` (a dotted ``cna_utils``
    name, usually the caller's ``__name__``) and ``parts`` (anything JSON can write; tensors by
    their bytes)."""
    if not code.startswith("cna_utils."):
        raise ValueError(f"code={code!r}: name the cna_utils module that computes the artefact (its __name__)")
    def plain(x):
        if torch.is_tensor(x):
            return hashlib.sha256(x.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        if isinstance(x, dict):
            return sorted((str(k), plain(v)) for k, v in x.items())
        return x
    text = json.dumps([weights_fingerprint(model), code_digest(code), plain(list(parts))])
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def artefact_path(cache_dir, kind: str, model, *parts, code: str, suffix: str = ".pt") -> Path | None:
    """``cache_dir/<kind>-<artefact_key>.<suffix>``, or None when there is no cache."""
    if cache_dir is None:
        return None
    return Path(cache_dir) / f"{kind}-{artefact_key(model, *parts, code=code)}{suffix}"


def save_atomic(obj, path: Path, save=torch.save) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save(obj, tmp)
    os.replace(tmp, path)


def load_or_compute(path: Path | None, compute, save=torch.save, load=torch.load):
    """``load(path)`` when it exists, else ``compute()``, saved to ``path`` (atomically) when given."""
    if path is not None and Path(path).exists():
        return load(path)
    obj = compute()
    if path is not None:
        save_atomic(obj, path, save)
    return obj
