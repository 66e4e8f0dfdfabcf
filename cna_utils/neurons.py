"""FFN neurons: exact importance scores, Comparative Neuron Analysis (CNA), neuron interventions.

Usage::

    tr_ori = trace(model, tok, cases)                       # last position, every layer
    with ablate_heads(model, ["23_3"]):
        tr_inv = trace(model, tok, cases)
    imp_ori, imp_inv = importance_scores(model, [tr_ori, tr_inv], targets)   # [B, L, N] each
    top = top_neurons(cna(imp_ori, imp_inv), k=10, layers=tr_ori.layers,
                      imp_ori=imp_ori, imp_inv=imp_inv, coef_ori=tr_ori.coef, coef_inv=tr_inv.coef)
    with mask_neurons(model, ["28_3696", (25, 7164)]):     # zero two neurons (every position)
        ...

Importance score (paper Section 4.1) of neuron k of layer l for target token w, at the last
position: ``log p(w | r^l + m_k v_k) - log p(w | r^l)`` with ``r^l = x^{l-1} + A^l``,
``p(. | h) = softmax(E_u N(h))`` over the full vocabulary and N the final norm with its
statistics frozen at the real final residual (``tracing.frozen_norm``). With the scale frozen the
logits are linear in h, so ``logits(r + m v) = logits(r) + (m / s) * P_l[:, k]`` where
``P_l = E_u diag(g) W_down^l`` is the same for every case: it is computed once per layer for a
whole batch of cases (and for several traces of models that share those weights), and each
(case, neuron) costs one scaled column add and one log-sum-exp over the vocabulary.
"""
from __future__ import annotations

from contextlib import contextmanager

import pandas as pd
import torch
from tqdm import tqdm

from .forward import encode, model_device
from .hooks import attached, capture_input, pre
from .families import down_proj, ffn_values, final_norm, spec, unembed
from .models import parse_pair
from .tracing import Trace, frozen_logits

__all__ = ["importance_scores", "projection", "cna", "top_neurons", "parse_neurons", "neuron_name",
           "mask_neurons", "run_masked", "neuron_effects", "coef_decrease", "single_token"]


def neuron_name(layer: int, k: int) -> str:
    """The paper's name of neuron k in FFN layer l, e.g. (28, 3696) -> "28_3696"."""
    return f"{layer}_{k}"


def parse_neurons(model, neurons) -> list[tuple[int, int]]:
    """Normalise ``["28_3696", (25, 7164), ...]`` to (layer, index) pairs and check their range."""
    s = spec(model)
    out = []
    for n in neurons:
        l, k = parse_pair(n, "neuron", "layer_index", "28_3696")
        if not 0 <= l < s.n_layers:
            raise IndexError(f"neuron {neuron_name(l, k)}: layer {l} is out of range 0..{s.n_layers - 1}")
        if not 0 <= k < s.d_mlp:
            raise IndexError(f"neuron {neuron_name(l, k)}: index {k} is out of range 0..{s.d_mlp - 1} "
                             f"(this model has {s.d_mlp} FFN neurons per layer)")
        out.append((l, k))
    return out


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
def projection(model, layer: int, dtype=torch.float32) -> torch.Tensor:
    """``P_l^T = (E_u diag(g) W_down^l)^T``: [d_mlp, vocab]; row k holds the logit change per unit of
    m_k / s (s = the frozen final-norm scale)."""
    g = final_norm(model).weight.to(dtype)
    eu = unembed(model).weight.to(dtype)                       # [V, d]
    return (ffn_values(model, layer).to(dtype).t() * g) @ eu.t()


def _as_targets(target_ids, n: int) -> torch.Tensor:
    t = torch.as_tensor(list(target_ids) if not torch.is_tensor(target_ids) else target_ids, dtype=torch.long)
    if t.dim() != 1 or len(t) != n:
        raise ValueError(f"need one target token id per case ({n}), got shape {tuple(t.shape)}")
    return t


def _lse_scores(z0, a, PT, gain, chunk):
    """The score by definition, one log-sum-exp over the vocabulary per (case, neuron):
    ``gain - (logsumexp(z0 + a_k P_k) - logsumexp(z0))``. ``a``/``PT``/``gain`` may be a subset of
    neurons."""
    out = torch.empty_like(gain)
    for b in range(len(z0)):
        lse = torch.empty(len(PT), device=z0.device, dtype=z0.dtype)
        for i in range(0, len(PT), chunk):
            lse[i:i + chunk] = torch.logsumexp(torch.addcmul(z0[b], a[b, i:i + chunk, None], PT[i:i + chunk]), -1)
        out[b] = gain[b] - (lse - torch.logsumexp(z0[b], -1))
    return out


def _series_scores(z0, a, PT, gain, order, tol, chunk):
    """Exact scores by the moment series (see ``importance_scores``). Neurons are taken in order of
    their largest |a_k| over the cases, so a chunk of small effects stops at the first even order
    whose proven bound is below ``tol`` for all of its scores; scores whose bound is still above
    ``tol`` at ``order`` are computed by the definition. Returns (scores, number scored so per case)."""
    p0 = torch.softmax(z0, -1)                                   # [B, V]
    out = torch.empty_like(gain)
    exact = torch.zeros(gain.shape, dtype=torch.bool, device=gain.device)
    perm = a.abs().amax(0).argsort()
    for i in range(0, PT.shape[0], chunk):
        ks = perm[i:i + chunk]
        rows = PT[ks]                                            # [c, V] (index_select is far slower on CPU)
        ai = a[:, ks].double()
        D = ai.abs() * rows.abs().amax(-1).double()              # >= |a_k P_kv| for every v
        q, aj, x = rows.clone(), torch.ones_like(ai), torch.zeros_like(ai)
        for j in range(1, order + 1):
            aj = aj * ai / j                                     # a^j / j!
            term = aj * (p0 @ q.t()).double()                    # E_p0[(a_k P_k)^j] / j!
            x += term
            if j % 2 == 0:
                # S - S_j = R_{j-1} - term_j with |R_{j-1}| <= e^D term_j (term_j >= 0 for even j)
                err = (D.exp() + 1) * term
                bound = torch.where(1 + x - err > 0, err / (1 + x - err), torch.full_like(err, float("inf")))
                if bool((bound <= tol).all()) or j + 1 > order:
                    break
            q.mul_(rows)
        out[:, ks] = (gain[:, ks].double() - torch.log1p(x)).to(out.dtype)
        exact[:, ks] = bound > tol
    for b in exact.any(1).nonzero().flatten().tolist():
        ks = exact[b].nonzero().flatten()
        out[b, ks] = _lse_scores(z0[b:b + 1], a[b:b + 1, ks], PT[ks], gain[b:b + 1, ks], 32)[0]
    return out, exact.sum(1)


def _same_inputs(tr: Trace, norm: Trace, layers) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``tr`` whose scored inputs (residual, coefficients of ``layers``, final-norm
    statistics) are equal bit for bit: ``(reps, inverse)`` with ``reps`` one row per distinct input
    and ``inverse[b]`` the position in ``reps`` of case b's input."""
    li = [tr.layer_index(l) for l in layers]
    key = torch.cat([tr.resid_mid[:, li].flatten(1), tr.coef[:, li].flatten(1),
                     norm.norm_scale.reshape(len(norm.norm_scale), -1).float(),
                     norm.norm_mean.reshape(len(norm.norm_mean), -1).float()], 1)
    first: dict[bytes, int] = {}
    inverse = [first.setdefault(key[b].numpy().tobytes(), b) for b in range(len(key))]
    reps = sorted(set(inverse))
    pos = {r: i for i, r in enumerate(reps)}
    return torch.tensor(reps, dtype=torch.long), torch.tensor([pos[r] for r in inverse], dtype=torch.long)


@torch.no_grad()
def importance_scores(model, trace: Trace | list[Trace], target_ids, layers=None, chunk: int = 32,
                      shared_norm: bool = False, progress: bool = False, method: str = "series",
                      order: int = 12, tol: float = 1e-12, stats: dict | None = None):
    """Exact importance score of every FFN neuron at the last position (see the module docstring).

    ``trace``: a ``Trace`` with ``resid_mid`` and ``coef`` at the last position, or a list of traces
    of models that share FFN values, final norm and unembedding (e.g. the original model and the
    model with a head ablated: the projections are then computed once for both). ``target_ids``:
    one token id per case (or, for a list of traces, one list per trace or one list for all).
    ``shared_norm=True`` freezes the final norm of EVERY trace at the first trace's statistics (the
    authors' CNA code does this: the intervened model is scored with the original model's final
    scale, so neurons the intervention cannot reach compare exactly equal). By default each trace
    uses its own real final residual.

    ``method="lse"`` computes the definition: one log-sum-exp over the vocabulary per (case,
    neuron). ``method="series"`` (default) gets the same numbers without it: with p0 = softmax(z0)
    and d_v = a_k P_kv the logit change, ``score = a_k P_k,w - log S`` with
    ``S = sum_v p0_v exp(d_v) = 1 + sum_j a_k^j E_p0[P_k^j] / j!``. The series stops at an even
    order j: by Taylor's theorem the rest is at most ``e^D`` times the j-th term (``D = |a_k|
    max_v |P_kv|``; the j-th term is >= 0), which bounds the error of ``log S``; the series
    continues until that bound is below ``tol`` nats (at most ``order`` terms). The moments
    ``E_p0[P_k^j]`` of all cases are matrix products with powers of the layer's projection, shared
    by all cases, and every score whose bound is still above ``tol`` is computed by the definition.
    The bound is on the truncation; the arithmetic is float32 (sums in float64), as exact as the
    definition's own float32 log-sum-exp (the two agree to ~1e-5 nats on real models). ``stats``, if given, gets
    the count of such neurons under "exact_neurons" and of all scores under "scores".
    Returns ``[cases, layers, neurons]`` float32 (a list of them for a list of traces)."""
    if method not in ("series", "lse"):
        raise ValueError(f"method must be 'series' (moment series with a proven bound) or 'lse' (the definition), "
                         f"got {method!r}")
    if not (2 <= int(order) <= 40 and int(order) % 2 == 0):
        raise ValueError(f"order must be an even number from 2 to 40 (the error bound needs an even last term), "
                         f"got {order!r}")
    traces = [trace] if isinstance(trace, Trace) else list(trace)
    if not traces:
        raise ValueError("no trace given")
    for tr in traces:
        if tr.positions != "last":
            raise ValueError("importance_scores needs a trace with positions='last'")
        for k in ("resid_mid", "coef"):
            if k not in tr.tensors:
                raise ValueError(f"the trace lacks {k!r}: trace(..., keep=('resid_mid', 'coef', ...))")
    nested = not torch.is_tensor(target_ids) and len(target_ids) > 0 and \
        isinstance(target_ids[0], (list, tuple)) or (torch.is_tensor(target_ids) and target_ids.dim() == 2)
    if nested:
        if len(target_ids) != len(traces):
            raise ValueError(f"{len(target_ids)} target lists for {len(traces)} traces")
        targets = [_as_targets(t, len(tr.logits)) for t, tr in zip(target_ids, traces)]
    else:
        targets = [_as_targets(target_ids, len(tr.logits)) for tr in traces]
    sel = list(traces[0].layers) if layers is None else sorted(set(layers))
    for tr in traces:
        for l in sel:
            tr.layer_index(l)                                   # raises for layers that were not traced
    s = spec(model)
    V = unembed(model).weight.shape[0]
    for t in targets:
        if len(t) and (t.min() < 0 or t.max() >= V):
            raise IndexError(f"target ids must be in 0..{V - 1}")
    if shared_norm:
        for tr in traces[1:]:
            if len(tr.logits) != len(traces[0].logits):
                raise ValueError("shared_norm needs traces of the same cases")
    dev = model_device(model)
    outs = [torch.zeros(len(tr.logits), len(sel), s.d_mlp) for tr in traces]
    counts = {"exact_neurons": 0, "scores": 0}
    groups = {id(tr): _same_inputs(tr, traces[0] if shared_norm else tr, sel) for tr in traces}
    it = tqdm(sel, desc="importance", disable=not progress, leave=False)
    for j, l in enumerate(it):
        PT = projection(model, l)                              # [N, V]
        for tr, tgt, out in zip(traces, targets, outs):
            li = tr.layer_index(l)
            norm = traces[0] if shared_norm else tr
            sc, mu = norm.norm_scale.to(dev).float(), norm.norm_mean.to(dev).float()
            z0 = frozen_logits(model, tr.resid_mid[:, li].to(dev), sc, mu)    # [B, V]
            a = tr.coef[:, li].to(dev).float() / sc.unsqueeze(-1)             # [B, N]
            tg = tgt.to(dev)
            gain = a * PT[:, tg].t()                            # [B, N] change of the target logit
            reps, inv = groups[id(tr)]
            if len(reps) < len(gain):
                # cases with the same inputs (one prompt, several targets) share log S: it is computed
                # once per distinct row, with a zero gain, and each case adds its own gain
                zero = torch.zeros(len(reps), gain.shape[1], device=dev)
                if method == "lse":
                    neg_log_s, n_exact = _lse_scores(z0[reps], a[reps], PT, zero, chunk), gain.numel()
                else:
                    neg_log_s, per_row = _series_scores(z0[reps], a[reps], PT, zero, int(order), tol, 256)
                    n_exact = int(per_row[inv].sum())
                sc_l = gain + neg_log_s[inv]
            elif method == "lse":
                sc_l, n_exact = _lse_scores(z0, a, PT, gain, chunk), gain.numel()
            else:
                sc_l, per_row = _series_scores(z0, a, PT, gain, int(order), tol, 256)
                n_exact = int(per_row.sum())
            out[:, j] = sc_l.cpu()
            counts["exact_neurons"] += n_exact
            counts["scores"] += gain.numel()
        del PT                                                  # [N, V] can be gigabytes: free it before the next
    if stats is not None:
        stats.update(counts)
    return outs[0] if isinstance(trace, Trace) else outs


def cna(scores_a: torch.Tensor, scores_b: torch.Tensor) -> torch.Tensor:
    """Comparative Neuron Analysis: ``scores_a - scores_b`` for the same neurons, inputs and targets
    (model A vs model B, or input A vs input B in one model). Sort it descending to find the neurons
    that explain why A predicts the target and B does not (``top_neurons``)."""
    if scores_a.shape != scores_b.shape:
        raise ValueError(f"score tensors differ in shape: {tuple(scores_a.shape)} vs {tuple(scores_b.shape)}")
    return scores_a - scores_b


def top_neurons(score: torch.Tensor, k: int, layers=None, **columns) -> pd.DataFrame:
    """The k highest-scoring neurons of every case.

    ``score``: [cases, L, N] (or [L, N] for one case); ``layers``: the model layer of each L slot
    (default 0..L-1); ``columns``: more tensors of the same shape to report beside the score (e.g.
    ``imp_ori=..., coef_ori=...``). Returns one row per (case, rank) with ``layer``, ``neuron``,
    ``name`` ("l_k"), ``score`` and the extra columns."""
    if k is None or int(k) < 1:
        raise ValueError(f"k must be a positive number of neurons, got {k!r}")
    one = score.dim() == 2
    sc = score.unsqueeze(0) if one else score
    if sc.dim() != 3:
        raise ValueError(f"score must be [cases, layers, neurons] or [layers, neurons], got {tuple(score.shape)}")
    B, L, N = sc.shape
    k = min(int(k), L * N)
    layers = list(range(L)) if layers is None else list(layers)
    if len(layers) != L:
        raise ValueError(f"{len(layers)} layer labels for {L} layer slots")
    cols = {}
    for name, t in columns.items():
        t = t.unsqueeze(0) if one else t
        if t.shape != sc.shape:
            raise ValueError(f"column {name!r} has shape {tuple(t.shape)}, expected {tuple(sc.shape)}")
        cols[name] = t.reshape(B, -1)
    vals, idx = sc.reshape(B, -1).topk(k, dim=-1)
    rows = []
    for b in range(B):
        for r in range(k):
            flat = int(idx[b, r])
            li, n = divmod(flat, N)
            row = dict(case=b, rank=r + 1, layer=layers[li], neuron=n, name=neuron_name(layers[li], n),
                       score=float(vals[b, r]))
            row.update({c: float(t[b, flat]) for c, t in cols.items()})
            rows.append(row)
    return pd.DataFrame(rows)


def _layer_masks(model, neurons, mode: str, layers, per_row: bool):
    """{layer: multiplier [N] or [rows, N]} for zero / keep interventions."""
    s = spec(model)
    if mode not in ("zero", "keep"):
        raise ValueError(f"mode must be 'zero' or 'keep', got {mode!r}")
    sets = neurons if per_row else [neurons]
    sets = [parse_neurons(model, ns) for ns in sets]
    if mode == "keep":
        if layers is None:
            raise ValueError("mode='keep' zeroes every other neuron of the given layers: pass layers=[...]")
        todo = sorted(set(layers))
        for l in todo:
            if not 0 <= l < s.n_layers:
                raise IndexError(f"layer {l} is out of range 0..{s.n_layers - 1}")
    else:
        todo = sorted({l for ns in sets for l, _ in ns})
    masks = {}
    for l in todo:
        m = torch.full((len(sets), s.d_mlp), 0.0 if mode == "keep" else 1.0)
        for r, ns in enumerate(sets):
            idx = [k for ll, k in ns if ll == l]
            if idx:
                m[r, idx] = 1.0 if mode == "keep" else 0.0
        masks[l] = m if per_row else m[0]
    return masks


@contextmanager
def mask_neurons(model, neurons, mode: str = "zero", layers=None, per_row: bool = False):
    """Intervene FFN neurons at every position: ``mode="zero"`` sets the listed neurons' coefficient
    scores to 0 (the same as zeroing their down_proj columns, which the tests show);
    ``mode="keep"`` zeroes every OTHER neuron of ``layers`` (the paper's "keep" experiment).

    ``neurons``: ["l_k", (l, k), ...]. With ``per_row=True`` it is a list of such lists, one per
    batch row, and every forward inside the block must have exactly that many rows."""
    masks = _layer_masks(model, neurons, mode, layers, per_row)

    def make(mask):
        def hook(module, args):
            x = args[0]
            m = mask.to(device=x.device, dtype=x.dtype)
            if m.dim() == 2:
                if x.shape[0] != m.shape[0]:
                    raise ValueError(f"per-row neuron masks for {m.shape[0]} rows, but the batch has {x.shape[0]}")
                m = m.view(m.shape[0], *([1] * (x.dim() - 2)), m.shape[1])
            return (x * m,) + tuple(args[1:])
        return hook

    with attached([pre(down_proj(model, l), make(m)) for l, m in masks.items()]):
        yield


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
