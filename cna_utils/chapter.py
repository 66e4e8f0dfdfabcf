"""What every chapter notebook does first: read its profile, seed, load the model, name its cache.

Usage (first code cell of a chapter)::

    ch = open_chapter("ch2", PROFILE, MODEL, DEVICE, RESULTS_DIR, SEED)
    model, tok, P = ch.model, ch.tok, ch.P
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from .models import ModelSpec, load_model, model_label, spec
from .profiles import get_profile

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

    def elapsed(self) -> float:
        return time.time() - self.t_start


def open_chapter(chapter: str, profile=None, model_name: str = "smollm2-135m", device=None, results_dir="results",
                 seed: int = 0) -> Chapter:
    """Seed torch, read ``profile[chapter]``, load the model and print what was loaded."""
    t0 = time.time()
    torch.manual_seed(seed)
    prof = get_profile(profile)
    if chapter not in prof:
        raise KeyError(f"profile {prof['name']!r} has no section {chapter!r}; sections: "
                       f"{sorted(k for k in prof if k != 'name')}")
    model, tok = load_model(model_name, device=device)
    label = model_label(model)
    pd.options.display.float_format = "{:.2f}".format
    ch = Chapter(model, tok, spec(model), prof, prof[chapter], Path(results_dir) / "cache" / f"{label}-{prof['name']}",
                 label, t0)
    print(ch.spec)
    print("profile:", prof["name"], ch.P)
    return ch
