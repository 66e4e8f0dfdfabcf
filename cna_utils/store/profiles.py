"""Run profiles (smoke / book / paper): the sizes of every chapter's run, read from profiles.yaml.

Usage::

    p = get_profile()                 # PROFILE / CNA_PROFILE environment variable, else "book"
    p["ch1"]["pairs_2d"]
"""
from __future__ import annotations

import os
from pathlib import Path

import yaml

__all__ = ["PROFILES", "get_profile"]

PROFILES = yaml.safe_load((Path(__file__).with_name("profiles.yaml")).read_text())


def get_profile(name: str | None = None) -> dict:
    """The sizes of profile ``name`` (default: $CNA_PROFILE, then $PROFILE, then "book")."""
    name = name or os.environ.get("CNA_PROFILE") or os.environ.get("PROFILE") or "book"
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}: choose one of {', '.join(PROFILES)} "
                         "(set it as the PROFILE notebook parameter or `make book PROFILE=smoke`)")
    return dict(PROFILES[name], name=name)
