"""What every benchmark script shares: its command line, the model, the cases, writing results."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from cna_utils.data.arithmetic import arithmetic_dataset
from cna_utils.model.families import spec
from cna_utils.model.loading import load_model


def start(doc: str, out: str, **extra):
    """Parse ``--cases``, ``--model``, ``--out`` and ``extra`` ({flag: argparse kwargs}), seed torch,
    load the model. Returns (args, model, tokenizer, spec)."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--cases", type=int, default=100, help="number of two-digit cases")
    ap.add_argument("--model", default="smollm2-135m", help="a built-in model name or a local path")
    ap.add_argument("--out", default=out, help="where to write the JSON results")
    for flag, kw in extra.items():
        ap.add_argument(flag, **kw)
    args = ap.parse_args()
    torch.manual_seed(0)
    model, tok = load_model(args.model)
    return args, model, tok, spec(model)


def two_digit_cases(tok, n: int):
    """``n`` two-digit cases, "a op b =" with numerals, the four operations in turn."""
    return arithmetic_dataset(digits=(2,), templates=[4], words=False, n=-(-n // 4), tokenizer=tok)[:n]


def clock(fn):
    """(fn(), its wall-clock seconds)."""
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def matmul_peak(n: int = 2048, reps: int = 5) -> float:
    """fp32 matmul FLOP/s of this machine (n x n times n x n)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t)


def write(res: dict, out: str) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
