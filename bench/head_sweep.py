"""Benchmark: sweeping every attention head of the default model, one head at a time.

Contenders, same cases, same numbers out (first-token correctness identical, log p(answer) to
1e-4 nats):
* ``batched``: ``head_sweep_cases`` -- one baseline forward caches the residual stream; for each
  layer the batch is replicated once per head (a per-row head mask) and the forward starts AT that
  layer; the LM head runs at the last position only.
* ``hooked``: one full forward per head with a pre-hook that zeroes the head (what a loop with
  TransformerLens or nnsight hooks does), logits at every position.
* ``copy``: the authors' notebook -- deep-copy the model, zero the head's o_proj columns, run a full
  forward (one prompt only: at 100 cases it would take most of an hour).

Sizes: ONE prompt (the authors sweep all heads for "3+5=") and ``--cases`` two-digit cases.
Scaling: the batched sweep's cost against the number of cases (every head) and of swept layers
(9 heads each, evenly spread, 30 cases).

    python bench/head_sweep.py --cases 100        # writes bench/results/head_sweep.json
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch
from _common import clock, start, two_digit_cases, write

from cna_utils.data.arithmetic import arithmetic_dataset
from cna_utils.measure.interventions import ablate_heads
from cna_utils.measure.sweep import head_sweep_cases
from cna_utils.model.forward import Run
from cna_utils.model import loading
from cna_utils.model.families import o_proj, spec, weight_out_in
from cna_utils.paper.depth import spread_layers
from cna_utils.model.forward import encode, model_device, score


def batched(model, tok, cases, heads):
    df = head_sweep_cases(model, tok, cases, heads=heads,
                          run=Run(progress=False, batch_size=len(cases), rows_per_forward=512))
    return {(int(l), int(h)): (torch.tensor(g.first_correct.values), torch.tensor(g.gold_logprob.values, dtype=torch.float32))
            for (l, h), g in df.sort_values("case").groupby(["layer", "head"])}


@torch.no_grad()
def _full_forward(model, batch):
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                   use_cache=False).logits                    # every position, as a plain forward returns
    sc = score(logits[:, -1:], batch.targets[:, :1])
    return sc["first_correct"], sc["gold_logprob"]


def hooked(model, tok, cases, heads):
    batch = encode(tok, [c.prompt_ids for c in cases], model_device(model))
    batch.targets = torch.tensor([[c.answer_ids[0]] for c in cases])
    out = {}
    for h in heads:
        with ablate_heads(model, [h]):
            out[h] = _full_forward(model, batch)
    return out


def model_copy(model, tok, cases, heads):
    batch = encode(tok, [c.prompt_ids for c in cases], model_device(model))
    batch.targets = torch.tensor([[c.answer_ids[0]] for c in cases])
    s = spec(model)
    out = {}
    for l, h in heads:
        m = copy.deepcopy(model)
        with torch.no_grad():
            weight_out_in(o_proj(m, l))[:, h * s.head_dim:(h + 1) * s.head_dim] = 0
        out[(l, h)] = _full_forward(m, batch)
        del m
    return out


def same(a, b, name):
    for h in a:
        if not torch.equal(a[h][0], b[h][0]) or (a[h][1] - b[h][1]).abs().max() > 1e-4:
            raise SystemExit(f"{name}: head {h} gives different numbers")


def flops_per_case(model, tok, cases, heads) -> dict:
    """FLOPs (matmuls and attention, counted by torch's FlopCounterMode in an untimed run) of the
    batched and the hooked sweep, per case."""
    from torch.utils.flop_counter import FlopCounterMode
    out = {}
    for name, fn in (("batched", batched), ("hooked", hooked)):
        counter = FlopCounterMode(display=False)
        with counter:
            fn(model, tok, cases, heads)
        out[name] = counter.get_total_flops() / len(cases)
    return out


def add_flops(res: dict, model, tok, one, many, heads) -> None:
    """Achieved GFLOP/s of each timed run, and the matmul peak of this machine."""
    from _common import matmul_peak
    per = {"one prompt": flops_per_case(model, tok, one, heads), "many": flops_per_case(model, tok, many[:10], heads)}
    res["matmul_peak_gflops"] = matmul_peak() / 1e9
    for name, r in res["sizes"].items():
        f = per["one prompt" if r["cases"] == 1 else "many"]
        r["gflop"] = {k: f[k] * r["cases"] / 1e9 for k in f}
        r["achieved_gflops"] = {k: f[k] * r["cases"] / r["seconds"][k] / 1e9 for k in f if k in r["seconds"]}


def main():
    args, model, tok, s = start(__doc__, "bench/results/head_sweep.json",
                                **{"--flops-only": dict(action="store_true",
                                                        help="only add FLOP counts to an existing results file")})
    heads = [(l, h) for l in range(s.n_layers) for h in range(s.n_heads)]
    one = arithmetic_dataset(ops="+", digits=(1,), templates=[4], words=False, tokenizer=tok)
    one = [c for c in one if (c.a, c.b) == (3, 5)]
    many = two_digit_cases(tok, args.cases)
    if args.flops_only:
        res = json.loads(Path(args.out).read_text())
        add_flops(res, model, tok, one, many, heads)
        write(res, args.out)
        return
    res = dict(model=loading.model_label(model), heads=len(heads), threads=torch.get_num_threads(), sizes={})

    for name, cases, contenders in (("one prompt", one, ("batched", "hooked", "copy")),
                                    (f"{len(many)} cases", many, ("batched", "hooked"))):
        fns = dict(batched=batched, hooked=hooked, copy=model_copy)
        outs, secs = {}, {}
        for c in contenders:
            outs[c], secs[c] = clock(lambda: fns[c](model, tok, cases, heads))
            print(f"{name}: {c} {secs[c]:.1f} s", flush=True)
        for c in contenders[1:]:
            same(outs["batched"], outs[c], f"{name}, {c}")
        res["sizes"][name] = dict(cases=len(cases), seconds=secs,
                                  speedup={f"{c}/batched": secs[c] / secs["batched"] for c in contenders[1:]})

    scaling = [dict(cases=len(many), layers=s.n_layers, seconds=res["sizes"][f"{len(many)} cases"]["seconds"]["batched"])]
    for n in (10, 30):
        if n < len(many):
            _, t = clock(lambda: batched(model, tok, many[:n], heads))
            scaling.append(dict(cases=n, layers=s.n_layers, seconds=t))
    few = many[:30]
    for k in (5, 10, 20):
        lay = spread_layers(s.n_layers, k)
        _, t = clock(lambda: batched(model, tok, few, [(l, h) for l in lay for h in range(s.n_heads)]))
        scaling.append(dict(cases=len(few), layers=k, layer_list=lay, seconds=t))
    _, t = clock(lambda: batched(model, tok, few, heads))
    scaling.append(dict(cases=len(few), layers=s.n_layers, seconds=t))
    res["scaling"] = scaling
    add_flops(res, model, tok, one, many, heads)
    write(res, args.out)


if __name__ == "__main__":
    main()
