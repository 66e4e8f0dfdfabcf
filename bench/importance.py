"""Benchmark: exact importance scores of every FFN neuron for many cases.

Contenders, same cases, same numbers out (checked to 1e-4 nats):
* ``series``: ``importance_scores`` (the default): each layer's FFN values projected to the
  vocabulary once for all cases, P_l = E_u diag(g) W_down^l; per (case, neuron) the log of the
  softmax-weighted sum of exp(logit change) from its moments E_p0[P^j] (matrix products shared by
  all cases), stopped where a proven bound is below 1e-12 nats; the few scores whose bound is not
  met are computed by the definition.
* ``lse``: ``importance_scores(solver="lse")``: the same projection, then a log-sum-exp over the
  vocabulary for every (case, neuron).
* ``per-case``: the authors' way -- for every case and layer, form the N subvalues m_k v_k, add
  each to the residual, apply the frozen final norm and the unembedding (an N x d x V matmul per
  case and layer), log-softmax, read the target.

``series`` runs on every case and on ``--series-layers`` evenly spread layers (default: all).
``lse`` runs on ``--straight-layers`` of those layers and ``per-case`` on them for
``--straight-cases`` cases; all are scaled to every layer and case (every layer has the same shapes). Also measured: the log-sum-exp floor of the definition
(one log-sum-exp over the vocabulary for every case and neuron) and the fp32 matmul peak.

    python bench/importance.py --cases 100                                  # the default model
    python bench/importance.py --cases 100 --model qwen2.5-coder-0.5b --series-layers 8 --straight-layers 1 --straight-cases 4
    python bench/importance.py --cases 100 --model qwen2.5-coder-1.5b --series-layers 7 --straight-layers 1 --straight-cases 2
Results go to bench/results/importance.json, one entry per model.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from _common import matmul_peak, start, two_digit_cases, write

from cna_utils.measure.importance import importance_scores
from cna_utils.measure.tracing import frozen_logits, trace
from cna_utils.model import loading
from cna_utils.model.families import ffn_values, spec, unembed
from cna_utils.paper.depth import spread_layers


def lse_floor(n_rows: int, vocab: int, reps: int, chunk: int = 32) -> float:
    """Seconds for ``reps`` log-sum-exps over [n_rows, vocab] (chunked like the library)."""
    x = torch.randn(n_rows, vocab)
    t = time.perf_counter()
    for _ in range(reps):
        for i in range(0, n_rows, chunk):
            torch.logsumexp(x[i:i + chunk], -1)
    return time.perf_counter() - t


@torch.no_grad()
def per_case(model, tr, targets, layers) -> torch.Tensor:
    """The straightforward computation, one case and one layer at a time."""
    out = torch.zeros(len(targets), len(layers), spec(model).d_mlp)
    for b, w in enumerate(targets):
        for j, l in enumerate(layers):
            li = tr.layer_index(l)
            r = tr.resid_mid[b, li]
            sc, mu = tr.norm_scale[b], tr.norm_mean[b]
            base = torch.log_softmax(frozen_logits(model, r, sc, mu), -1)[w]
            vals = ffn_values(model, l).float().t()                                   # [N, d]
            for i in range(0, len(vals), 2048):                                          # bounded memory
                sub = tr.coef[b, li, i:i + 2048][:, None] * vals[i:i + 2048]
                lp = torch.log_softmax(frozen_logits(model, r + sub, sc, mu), -1)[:, w]
                out[b, j, i:i + 2048] = lp - base
    return out


def top_k_agreement(a: torch.Tensor, b: torch.Tensor, k: int, tol: float) -> tuple[int, bool]:
    """Cases whose top-k neurons differ between ``a`` and ``b`` (each [cases, ...]), and whether every
    neuron in or out of only one of the two sets scores within ``tol`` of the k-th score (a tie)."""
    differ, ties = 0, True
    for x, y in zip(a.flatten(1), b.flatten(1)):
        top = x.topk(k)
        only_one = set(top.indices.tolist()) ^ set(y.topk(k).indices.tolist())
        if only_one:
            differ += 1
            kth = float(top.values[-1])
            ties &= all(abs(float(x[i]) - kth) <= tol for i in only_one)
    return differ, ties


def timed(fn, *args, **kw):
    t = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t


def main():
    args, model, tok, s = start(__doc__, "bench/results/importance.json",
                                **{"--series-layers": dict(type=int, default=None),
                                   "--straight-layers": dict(type=int, default=3),
                                   "--straight-cases": dict(type=int, default=None,
                                                            help="cases for the per-case method (default: all)")})
    cases = two_digit_cases(tok, args.cases)
    targets = [c.answer_ids[0] for c in cases]
    tr = trace(model, tok, cases, keep=("resid_mid", "coef"))
    ser = spread_layers(s.n_layers, args.series_layers)
    sub = [ser[i] for i in spread_layers(len(ser), args.straight_layers)]
    nc = min(args.straight_cases or len(cases), len(cases))

    st = {}
    series_all, t_series = timed(importance_scores, model, tr, targets, layers=ser, stats=st)
    t_series_all = t_series * s.n_layers / len(ser)
    lse_sub, t_lse_sub = timed(importance_scores, model, tr, targets, layers=sub, solver="lse")
    tr_few = trace(model, tok, cases[:nc], layers=sub, keep=("resid_mid", "coef"))
    slow_sub, t_slow_sub = timed(per_case, model, tr_few, targets[:nc], sub)
    series_sub = series_all[:, [ser.index(l) for l in sub]]
    err = {"series_vs_lse": float((series_sub - lse_sub).abs().max()),
           "series_vs_per_case": float((series_sub[:nc] - slow_sub).abs().max()),
           "lse_vs_per_case": float((lse_sub[:nc] - slow_sub).abs().max())}
    if max(err.values()) > 1e-4:
        raise SystemExit(f"the methods disagree: {err}")
    differ, ties = top_k_agreement(series_sub, lse_sub, k=99, tol=2 * max(err.values()))

    V = unembed(model).weight.shape[0]
    floor_all = lse_floor(s.d_mlp, V, reps=2) / 2 * len(cases) * s.n_layers
    peak = matmul_peak()
    scale_l = s.n_layers / len(sub)
    proj_flops = 2 * V * s.d_model * s.d_mlp * s.n_layers
    lse_all = t_lse_sub * scale_l
    per_case_all = t_slow_sub * scale_l * len(cases) / nc
    res = dict(
        model=loading.model_label(model), cases=len(cases), layers=s.n_layers, neurons=s.d_mlp, vocab=V,
        threads=torch.get_num_threads(), max_abs_diff_nats=err, top99_cases_differing=differ,
        top99_differences_are_ties=ties, series_layers=ser,
        straight_layers=sub,
        straight_cases=nc, scored_by_definition=st["exact_neurons"] / st["scores"],
        seconds=dict(series_all_layers=t_series_all, lse_subset=t_lse_sub, per_case_subset=t_slow_sub,
                     lse_all_layers_projected=lse_all, per_case_all_projected=per_case_all,
                     lse_floor_all_layers=floor_all),
        ratio_lse_over_series=lse_all / t_series_all,
        ratio_per_case_over_series=per_case_all / t_series_all,
        ratio_series_over_lse_floor=t_series_all / floor_all,
        matmul_peak_gflops=peak / 1e9,
        projection_share_of_series=proj_flops / peak / t_series_all,
    )
    out = Path(args.out)
    allres = json.loads(out.read_text()) if out.exists() else {}
    if "model" in allres:                         # an older single-model file
        allres = {}
    allres[res["model"]] = res
    write(allres, args.out)


if __name__ == "__main__":
    main()
