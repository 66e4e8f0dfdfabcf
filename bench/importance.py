"""Benchmark: exact importance scores of every FFN neuron for many cases.

Contenders, same cases, same numbers out (checked to 1e-4 nats):
* ``batched``: ``cu.importance_scores`` -- the vocabulary image of each layer's FFN values,
  P_l = E_u diag(g) W_down^l, computed once for all cases; per (case, neuron) a scaled column add
  and a log-sum-exp over the vocabulary.
* ``per-case``: the authors' way -- for every case and layer, form the N subvalues m_k v_k, add
  each to the residual, apply the frozen final norm and the unembedding (an N x d x V matmul per
  case and layer), log-softmax, read the target.

The per-case method is timed on ``--straight-layers`` evenly spread layers (its cost per layer is
the same for every layer: same shapes) and scaled to all layers; the batched method is timed on
the same layers (for the ratio) and on all layers. Also measured: the log-sum-exp floor (the
exact score needs a log-sum-exp over the vocabulary for every case and neuron) and the fp32 matmul
peak of this machine.

    python bench/importance.py --cases 100          # writes bench/results/importance.json
"""
from __future__ import annotations

import time

import torch
from _common import matmul_peak, start, two_digit_cases, write

import cna_utils as cu


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
    out = torch.zeros(len(targets), len(layers), cu.spec(model).d_mlp)
    for b, w in enumerate(targets):
        for j, l in enumerate(layers):
            li = tr.layer_index(l)
            r = tr.resid_mid[b, li]
            sc, mu = tr.norm_scale[b], tr.norm_mean[b]
            base = torch.log_softmax(cu.frozen_logits(model, r, sc, mu), -1)[w]
            sub = tr.coef[b, li][:, None] * cu.ffn_values(model, l).float().t()          # [N, d]
            lp = torch.log_softmax(cu.frozen_logits(model, r + sub, sc, mu), -1)[:, w]  # [N]
            out[b, j] = lp - base
    return out


def main():
    args, model, tok, s = start(__doc__, "bench/results/importance.json",
                                **{"--straight-layers": dict(type=int, default=3)})
    cases = two_digit_cases(tok, args.cases)
    targets = [c.answer_ids[0] for c in cases]
    tr = cu.trace(model, tok, cases, keep=("resid_mid", "coef"))
    sub_layers = cu.spread_layers(s.n_layers, args.straight_layers)

    t = time.perf_counter()
    fast_sub = cu.importance_scores(model, tr, targets, layers=sub_layers)
    t_fast_sub = time.perf_counter() - t
    t = time.perf_counter()
    slow_sub = per_case(model, tr, targets, sub_layers)
    t_slow_sub = time.perf_counter() - t
    err = float((fast_sub - slow_sub).abs().max())
    if err > 1e-4:
        raise SystemExit(f"the two methods disagree by {err:.2e} nats")
    t = time.perf_counter()
    cu.importance_scores(model, tr, targets)
    t_fast_all = time.perf_counter() - t

    V = cu.unembed(model).weight.shape[0]
    t_lse_one = lse_floor(s.d_mlp, V, reps=3) / 3                 # one (case, layer)
    floor_all = t_lse_one * len(cases) * s.n_layers
    peak = matmul_peak()
    proj_flops = 2 * V * s.d_model * s.d_mlp                        # P_l for one layer
    fast_flops = proj_flops * s.n_layers + 2 * len(cases) * s.n_layers * s.d_mlp * V   # + column adds
    slow_flops_per = 2 * s.d_mlp * s.d_model * V                    # per case and layer
    scale = s.n_layers / len(sub_layers)
    res = dict(
        model=cu.models.model_label(model), cases=len(cases), layers=s.n_layers, neurons=s.d_mlp, vocab=V,
        threads=torch.get_num_threads(), max_abs_diff_nats=err, straight_layers=sub_layers,
        seconds=dict(batched_subset=t_fast_sub, per_case_subset=t_slow_sub, batched_all_layers=t_fast_all,
                     per_case_all_layers_projected=t_slow_sub * scale, lse_floor_all_layers=floor_all),
        ratio_per_case_over_batched=t_slow_sub / t_fast_sub,
        ratio_batched_over_lse_floor=t_fast_all / floor_all,
        matmul_peak_gflops=peak / 1e9,
        achieved_gflops=dict(batched=fast_flops / t_fast_all / 1e9,
                             per_case=slow_flops_per * len(cases) * len(sub_layers) / t_slow_sub / 1e9),
    )
    write(res, args.out)


if __name__ == "__main__":
    main()
