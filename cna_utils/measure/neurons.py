"""FFN neurons: effects of interventions on them, and coefficient-score changes.

Usage::

    tr_ori = trace(model, tok, cases)                       # last position, every layer
    with ablate_heads(model, ["23_3"]):
        tr_inv = trace(model, tok, cases)
    imp_ori, imp_inv = importance_scores(model, [tr_ori, tr_inv], targets)   # [B, L, N] each
    top = top_neurons(cna(imp_ori, imp_inv), k=10, layers=tr_ori.layers,
                      imp_ori=imp_ori, imp_inv=imp_inv, coef_ori=tr_ori.coef, coef_inv=tr_inv.coef)
    with mask_neurons(model, ["28_3696", (25, 7164)]):     # zero two neurons (every position)
        ...

The importance scores, CNA and ``top_neurons`` are in ``importance``; ``mask_neurons`` (and every
other intervention) in ``interventions``.
"""
from __future__ import annotations

import pandas as pd
import torch

from cna_utils.measure.interventions import mask_neurons
from cna_utils.measure.names import neuron_name, parse_neurons
from cna_utils.model.families import down_proj
from cna_utils.model.forward import encode, model_device
from cna_utils.model.hooks import attached, capture_input

__all__ = ["run_masked",
           "neuron_effects", "coef_decrease", "single_token"]


def single_token(tokenizer, target) -> int:
    """A target given as an id or as text that is exactly one token -> its id (clear error otherwise)."""
    if isinstance(target, int):
        return target
    ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise ValueError(f"target {target!r} is {len(ids)} tokens {pieces}, not one: importance scores need a "
                         "single next token. Pass the id of the first answer token (Case.answer_ids[0]).")
    return ids[0]


@torch.no_grad()
def run_masked(model, tokenizer, prompt_ids, target: int, neuron_sets, mode: str = "zero", layers=None,
               coef_layers=None) -> dict:
    """One prompt, several interventions in ONE forward: row r applies ``neuron_sets[r]``.

    Returns ``logprob`` [R] (log p(target) at the last position), ``correct`` [R] (target is the
    argmax) and, with ``coef_layers``, ``coef`` [R, len(coef_layers), d_mlp] (coefficient scores at
    the last position, after the intervention)."""
    if len(neuron_sets) == 0:
        raise ValueError("no neuron sets given")
    R = len(neuron_sets)
    batch = encode(tokenizer, [list(prompt_ids)] * R, model_device(model))
    cap = {}
    # the capture hooks are attached after the mask hooks, so they see the masked coefficient scores
    with mask_neurons(model, neuron_sets, mode=mode, layers=layers, per_row=True), \
            attached(capture_input({l: down_proj(model, l) for l in (coef_layers or [])}, cap,
                                   lambda x: x[:, -1].float().cpu())):
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       position_ids=batch.position_ids, use_cache=False).logits[:, -1].float()
    lp = torch.log_softmax(logits, -1)
    out = dict(logprob=lp[:, target].cpu(), correct=(logits.argmax(-1) == target).cpu())
    if coef_layers:
        out["coef"] = torch.stack([cap[l] for l in coef_layers], dim=1)
    return out


def neuron_effects(model, tokenizer, prompt_ids, target: int, neurons, batch_rows: int = 64) -> pd.DataFrame:
    """Causal effect of zeroing each neuron ALONE: the drop in log p(target) at the last position
    (one batched forward per ``batch_rows`` neurons, plus one unmasked row)."""
    neurons = parse_neurons(model, neurons)
    base = float(run_masked(model, tokenizer, prompt_ids, target, [[]])["logprob"][0])
    drops = []
    for i in range(0, len(neurons), batch_rows):
        part = neurons[i:i + batch_rows]
        lp = run_masked(model, tokenizer, prompt_ids, target, [[n] for n in part])["logprob"]
        drops += (base - lp).tolist()
    return pd.DataFrame(dict(layer=[l for l, _ in neurons], neuron=[k for _, k in neurons],
                             name=[neuron_name(*n) for n in neurons], logprob_drop=drops))


def coef_decrease(before: torch.Tensor, after: torch.Tensor) -> float:
    """Relative decrease (%) of coefficient scores, measured in the direction each neuron was
    pushing: ``100 * sum(sign(m) * (m - m')) / sum(|m|)``. Coefficient scores of gated FFNs can be
    negative, so a plain ratio of sums would let signs cancel; for positive scores this is the
    plain relative decrease of their sum."""
    before, after = before.float(), after.float()
    denom = before.abs().sum()
    if denom == 0:
        return float("nan")
    return float(100 * (torch.sign(before) * (before - after)).sum() / denom)
