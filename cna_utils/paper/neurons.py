"""The checks of a CNA ranking: Table 5 (mask / keep / coef), Table 6 (zero the lowest top
neuron), the importance score against the effect of zeroing a neuron, and Table 7 (the shallow
vectors before and after the attention transform).

Usage::

    mask_keep(model, tok, cases, res)               # Table 5, per case and k
    lowest_neuron_effect(model, tok, cases, res)    # Table 6, per case and k
    hidden_vectors(model, tok, case, transfer_scores(...), concept_mask(tok))   # Table 7
"""
from __future__ import annotations

import pandas as pd
import torch
from tqdm import tqdm

from cna_utils.measure.circuits import lowest_neuron, ov_transform
from cna_utils.paper.depth import depth_map
from cna_utils.model.families import ffn_values, spec
from cna_utils.measure.neurons import coef_decrease, neuron_effects, run_masked
from cna_utils.measure.importance import top_neurons
from cna_utils.measure.compare import Comparison
from cna_utils.measure.tracing import norm_stats, trace
from cna_utils.measure.vocab import count_concepts, vocab_logits, vocab_projection

__all__ = ["mask_keep", "table_5", "mask_keep_curve", "importance_vs_effect", "lowest_neuron_effect",
           "hidden_vectors"]


def mask_keep(model, tokenizer, cases, res: Comparison, ks=(99, 50, 30, 20, 10), deep_layers=None,
              progress: bool = False) -> pd.DataFrame:
    """Paper Table 5, per case and k: is the answer still the argmax when the case's top-k CNA
    neurons are zeroed ("mask"), when every deep neuron but the case's k top CNA neurons among the
    ``deep_layers`` is zeroed ("keep"), and how much lower are the top-k neurons' coefficient scores
    in the intervened model ("coef", %)? Neurons the head cannot reach score exactly 0, so past them
    the order within a top-k is arbitrary. One forward per case and mode (the k values are rows of
    one batch)."""
    if not ks:
        raise ValueError("ks is empty: give the top-k sizes to test, e.g. (99, 50, 30, 20, 10)")
    deep = list(deep_layers) if deep_layers is not None else depth_map(spec(model).n_layers)["deep"]
    outside = torch.tensor([l not in set(deep) for l in res.layers])
    kmax = max(ks)
    rows = []
    for i, c in enumerate(tqdm(cases, desc="mask / keep", disable=not progress, leave=False)):
        top = res.top(kmax, case=i)
        sets = [list(zip(top.layer[:k], top.neuron[:k])) for k in ks]
        masked = run_masked(model, tokenizer, c.prompt_ids, res.targets[i], sets, mode="zero")
        in_deep = res.score[i].clone()
        in_deep[outside] = float("-inf")              # the top-k among the deep neurons, which "keep" spares
        top_deep = top_neurons(in_deep, min(kmax, int((~outside).sum()) * in_deep.shape[-1]), layers=res.layers)
        kept = run_masked(model, tokenizer, c.prompt_ids, res.targets[i],
                          [list(zip(top_deep.layer[:k], top_deep.neuron[:k])) for k in ks], mode="keep", layers=deep)
        for j, k in enumerate(ks):
            t = top.iloc[:k]
            rows.append(dict(case=i, prompt=c.prompt, k=k, mask_correct=bool(masked["correct"][j]),
                             keep_correct=bool(kept["correct"][j]),
                             coef=coef_decrease(torch.tensor(t.coef_ori.values), torch.tensor(t.coef_inv.values))))
    return pd.DataFrame(rows)


def table_5(mk: pd.DataFrame) -> pd.DataFrame:
    """Paper Table 5 from ``mask_keep``'s rows: per k (columns "top<k>", in ``mk``'s order) the share
    of correct cases lost when the top-k are zeroed ("mask") and when every other deep neuron is
    ("keep"), and the mean decrease of the top-k's coefficient scores with the head zeroed ("coef"), all %."""
    return pd.DataFrame({f"top{k}": {"mask": 100 * (1 - g.mask_correct.mean()), "keep": 100 * (1 - g.keep_correct.mean()),
                                     "coef": g.coef.mean()} for k, g in mk.groupby("k", sort=False)})


def mask_keep_curve(mk: pd.DataFrame) -> pd.DataFrame:
    """Mask and keep's accuracy decrease (%) per k, one row per k (for the curve over larger k)."""
    cv = mk.groupby("k").agg(mask=("mask_correct", "mean"), keep=("keep_correct", "mean"))
    return 100 * (1 - cv)


def importance_vs_effect(model, tokenizer, cases, res: Comparison, n_cases: int, top: int) -> pd.DataFrame:
    """For the first ``n_cases`` cases: the ``top`` neurons by importance score in the original model,
    each with its static importance score and the causal effect of zeroing it alone (drop in
    log p(answer), one batched forward per case)."""
    frames = []
    for i, c in enumerate(cases[:n_cases]):
        t = top_neurons(res.imp_ori[i], top, layers=res.layers)
        eff = neuron_effects(model, tokenizer, c.prompt_ids, res.targets[i], list(zip(t.layer, t.neuron)))
        frames.append(t.assign(case=i, prompt=c.prompt, effect=eff.logprob_drop.values))
    return pd.concat(frames, ignore_index=True)


def lowest_neuron_effect(model, tokenizer, cases, res: Comparison, ks=(99, 50, 30, 20, 10),
                         progress: bool = False) -> pd.DataFrame:
    """Paper Table 6, per case and k: zero the lowest neuron among the case's top-k CNA neurons (the
    paper's tie rule: the largest importance score in the lowest layer) in the original model and
    measure the coefficient decrease (%) of the other top-k neurons."""
    if not ks:
        raise ValueError("ks is empty")
    kmax = max(ks)
    rows = []
    for i, c in enumerate(tqdm(cases, desc="lowest neuron", disable=not progress, leave=False)):
        top = res.top(kmax, case=i)
        lows = [lowest_neuron(top.iloc[:k]) for k in ks]
        layers_needed = sorted(set(top.layer))
        out = run_masked(model, tokenizer, c.prompt_ids, res.targets[i],
                         [[(int(lo.layer), int(lo.neuron))] for lo in lows], coef_layers=layers_needed)
        for j, (k, lo) in enumerate(zip(ks, lows)):
            t = top.iloc[:k]
            t = t[t.name != lo["name"]]
            li = [layers_needed.index(l) for l in t.layer]
            after = out["coef"][j][li, list(t.neuron)]
            rows.append(dict(case=i, prompt=c.prompt, k=k, lowest=lo["name"], lowest_layer=int(lo.layer),
                             coef=coef_decrease(torch.tensor(t.coef_ori.values), after),
                             still_correct=bool(out["correct"][j])))
    return pd.DataFrame(rows)


def hidden_vectors(model, tokenizer, case, scores: pd.DataFrame, mask: torch.Tensor, per_position: int = 2,
                   show: int = 8, count_top: int = 50) -> pd.DataFrame:
    """Paper Table 7: from ``scores`` (``transfer_scores`` rows), the best ``per_position`` shallow
    subvalues m v and the word embedding at each operand position, each projected to the vocabulary
    as it is ("origin") and after the value-output transform of its attention layer ("attn
    transform", norm frozen at the real residual of the position): the top-``show`` tokens and the
    number of concept tokens (``mask``) among the top ``count_top``. One row per vector, indexed by
    name, with its position and the operand it sits on (the positions are those ``scores`` holds,
    in prompt order)."""
    positions = sorted(int(p) for p in scores.position.unique())        # none when no path reaches the head
    ids = list(case.prompt_ids)
    resid = trace(model, tokenizer, [case], positions="all", keep=("resid_in",)).resid_in[0]   # [T, layers, d]
    pick = pd.concat([scores[(scores.layer >= 0) & (scores.position == p)].head(per_position) for p in positions] +
                     [scores[(scores.layer < 0) & (scores.position == p)].head(1) for p in positions]) \
        if positions else scores.head(0)
    pick["operand"] = [tokenizer.decode([ids[p]]).strip() for p in pick.position]
    vecs = []
    for r in pick.itertuples():
        p, t = int(r.position), int(r.attn_layer)
        vec = resid[p, 0] if r.layer < 0 else ffn_values(model, int(r.layer))[:, int(r.neuron)].detach() * r.coef
        vecs.append((vec, ov_transform(model, t, vec, scale=norm_stats(model, resid[p, t])[0])))
    for j, col in enumerate(["origin", "attn transform"]):
        pick[col] = [", ".join(vocab_projection(model, tokenizer, v[j], k=show)) for v in vecs]
        pick[f"concepts in top-{count_top}, {col}"] = [
            int(count_concepts(vocab_logits(model, v[j]).topk(count_top).indices, mask)) for v in vecs]
    return pick.drop(columns=["layer", "neuron", "coef"]).set_index("name")
