"""Benchmark: chapter 7's two costs where one prompt is asked for many professions.

Contenders, same numbers out (the largest difference is reported):
* log-probabilities of every profession after every prompt (the bias metric, run once per neuron
  edit): ``bias.continuation_logprob``, which runs each prompt once and lets a batch of professions
  read its key/value cache, vs one left-padded sequence per (prompt, profession), the
  straightforward way;
* the gender CNA's importance scores (one prompt per gender, every profession a target):
  ``importance_scores``, which computes the log-sum-exp term once per distinct input and adds
  each target's gain, vs the same series scorer run on every (prompt, profession) row. Both share
  the layer's projection, timed apart; ``--layers`` evenly spread layers are scored and the totals
  scaled to every layer.

    python bench/shared_prompt.py                                 # the default model
    python bench/shared_prompt.py --model qwen2.5-coder-0.5b --layers 3
Results go to bench/results/shared_prompt.json, one entry per model.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from _common import start, write

from cna_utils.measure.importance import _series_scores, importance_scores, projection
from cna_utils.measure.tracing import frozen_logits, trace
from cna_utils.model.families import spec
from cna_utils.paper.depth import spread_layers
from cna_utils.paper import bias
from cna_utils.model.forward import answer_logits, encode, length_batches, score


@torch.no_grad()
def padded_logprobs(model, tok, cases, batch_size: int = 64) -> torch.Tensor:
    """One left-padded sequence per case: prompt + answer[:-1], the answer's log-probability summed."""
    out = torch.empty(len(cases))
    for idx in length_batches(cases, batch_size):
        batch = encode(tok, [cases[i] for i in idx])
        out[idx] = score(answer_logits(model, batch), batch.targets)["token_logprob"].sum(-1)
    return out


@torch.no_grad()
def every_row(model, tr, targets, layers) -> tuple[torch.Tensor, float]:
    """The series scorer on every row of the trace (no sharing); returns (scores, seconds without the projection)."""
    out, spent = torch.zeros(len(targets), len(layers), spec(model).d_mlp), 0.0
    tg = torch.as_tensor(targets)
    for j, l in enumerate(layers):
        PT = projection(model, l)
        t = time.perf_counter()
        li = tr.layer_index(l)
        z0 = frozen_logits(model, tr.resid_mid[:, li], tr.norm_scale, tr.norm_mean)
        a = tr.coef[:, li] / tr.norm_scale.unsqueeze(-1)
        out[:, j] = _series_scores(z0, a, PT, a * PT[:, tg].t(), 12, 1e-12, 256)[0]
        spent += time.perf_counter() - t
    return out, spent


def main():
    args, model, tok, s = start(__doc__, "bench/results/shared_prompt.json",
                                **{"--layers": dict(type=int, default=3, help="evenly spread layers scored")})
    data = bias.load_bias_data()
    prompts = [bias.fill(p, g) for p in data["prompts"] + data["held_out_prompts"] for g in bias.GENDERS]
    words = [w for g in bias.GENDERS for w in data["paper_professions"][g]]
    cases = bias._cases(tok, prompts, words)

    t = time.perf_counter()
    straight = padded_logprobs(model, tok, cases)
    t_straight = time.perf_counter() - t
    t = time.perf_counter()
    shared = torch.tensor(bias.continuation_logprob(model, tok, prompts, words).values).flatten()
    t_shared = time.perf_counter() - t

    one, _ = bias.single_token_words(tok, prompts[0], words)
    cna_cases = bias._cases(tok, [prompts[0]], one)
    targets = [c.answer_ids[0] for c in cna_cases]
    layers = spread_layers(s.n_layers, args.layers)
    tr = trace(model, tok, cna_cases, layers=layers, keep=("resid_mid", "coef"))
    ref, t_rows = every_row(model, tr, targets, layers)
    t = time.perf_counter()
    PT = [projection(model, l) for l in layers]
    t_proj = time.perf_counter() - t
    del PT
    t = time.perf_counter()
    got = importance_scores(model, tr, targets, layers=layers)
    t_grouped = time.perf_counter() - t - t_proj            # the projection is the same work in both
    scale = s.n_layers / len(layers)
    res = dict(
        model=args.model, threads=torch.get_num_threads(),
        bias_metric=dict(prompts=len(prompts), professions=len(words), sequences=len(cases),
                         seconds=dict(padded=t_straight, shared_prompt=t_shared),
                         ratio_padded_over_shared=t_straight / t_shared,
                         max_abs_diff_nats=float((straight - shared).abs().max())),
        gender_cna=dict(cases=len(cna_cases), distinct_inputs=1, layers=layers,
                        seconds_all_layers=dict(projection=t_proj * scale, every_row=t_rows * scale,
                                                shared_log_s=max(t_grouped, 0.0) * scale),
                        ratio_every_row_over_shared=t_rows / max(t_grouped, 1e-9),
                        ratio_with_projection=(t_rows + t_proj) / (max(t_grouped, 0.0) + t_proj),
                        max_abs_diff_nats=float((ref - got).abs().max())),
    )
    path = Path(args.out)
    allres = json.loads(path.read_text()) if path.exists() else {}
    allres[args.model] = res
    write(allres, args.out)


if __name__ == "__main__":
    main()
