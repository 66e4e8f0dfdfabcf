"""Exact importance scores of FFN neurons (paper Section 4.1), every neuron of every layer at once.

Usage::

    tr = trace(model, tok, cases)                           # last position, every layer
    imp = importance_scores(model, tr, [c.answer_ids[0] for c in cases])   # [cases, layers, neurons]

Importance score (paper Section 4.1) of neuron k of layer l for target token w, at the last
position: ``log p(w | r^l + m_k v_k) - log p(w | r^l)`` with ``r^l = x^{l-1} + A^l``,
``p(. | h) = softmax(E_u N(h))`` over the full vocabulary and N the final norm with its
statistics frozen at the real final residual (``tracing.frozen_norm``). With the scale frozen the
logits are linear in h, so ``logits(r + m v) = logits(r) + (m / s) * P_l[:, k]`` where
``P_l = E_u diag(g) W_down^l`` is the same for every case: it is computed once per layer for a
whole batch of cases (and for several traces of models that share those weights), and each
(case, neuron) costs one scaled column add and one log-sum-exp over the vocabulary.

Cases with the same input (one prompt asked for several target tokens) share the log-sum-exp
term: it is computed once per distinct input and each case adds its own target's gain.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
from tqdm import tqdm

from cna_utils.model.families import ffn_values, final_norm, spec, unembed
from cna_utils.model.forward import model_device
from cna_utils.measure.names import neuron_name
from cna_utils.measure.tracing import frozen_logits, Trace

__all__ = ["importance_scores", "Solver", "projection", "cna", "top_neurons", "SERIES_MIN_ROWS"]

# The series costs about ``order`` passes over the layer's [neurons, vocab] projection whatever the
# number of cases; the definition costs one log-sum-exp over it per case. Measured on one layer of
# Qwen2.5-Coder-0.5B (4,864 x 151,936), 2 cores: series 8.9 / 6.9 / 5.5 / 5.4 s for 1 / 2 / 4 / 16
# cases, definition 3.7 / 5.7 / 8.9 / 41.7 s (the projection itself: 12.6 s). With this many
# distinct inputs or fewer, ``method="auto"`` computes the definition.
SERIES_MIN_ROWS = 2


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


@dataclass(frozen=True)
class Solver:
    """How ``importance_scores`` computes the exact scores (the numbers agree to float32 rounding
    whichever is chosen): ``method`` "auto" | "series" | "lse" (see ``importance_scores``), the
    series' largest ``order`` (even, 2-40: the error bound needs an even last term) and its bound
    ``tol`` in nats, and ``chunk``, the neurons per log-sum-exp block (memory only)."""
    method: str = "auto"
    order: int = 12
    tol: float = 1e-12
    chunk: int = 32

    def __post_init__(self):
        if self.method not in ("auto", "series", "lse"):
            raise ValueError(f"method must be 'auto', 'series' (moment series with a proven bound) or 'lse' (the "
                             f"definition), got {self.method!r}")
        if not (2 <= int(self.order) <= 40 and int(self.order) % 2 == 0):
            raise ValueError(f"order must be an even number from 2 to 40 (the error bound needs an even last "
                             f"term), got {self.order!r}")
        if int(self.chunk) < 1:
            raise ValueError(f"chunk must be positive, got {self.chunk!r}")


def _checked(model, traces, target_ids, layers, solver, shared_norm):
    """``importance_scores``' arguments checked: (one target tensor per trace, the layers to score)."""
    if not isinstance(solver, Solver):
        raise TypeError(f"solver must be a Solver or a method name, got {solver!r}")
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
    V = unembed(model).weight.shape[0]
    for t in targets:
        if len(t) and (t.min() < 0 or t.max() >= V):
            raise IndexError(f"target ids must be in 0..{V - 1}")
    if shared_norm and any(len(tr.logits) != len(traces[0].logits) for tr in traces[1:]):
        raise ValueError("shared_norm needs traces of the same cases")
    return targets, sel


def _layer_scores(z0, a, PT, tg, group, how):
    """One layer's scores of every case and neuron, and how many were computed by the definition.
    ``group`` = ``_same_inputs``: cases with the same input (one prompt, several targets) share
    log S, computed once per distinct row with a zero gain; each case then adds its own gain.
    ``how``: the ``Solver``."""
    method, order, tol, chunk = how.method, how.order, how.tol, how.chunk
    gain = a * PT[:, tg].t()                                    # [B, N] change of the target logit
    reps, inv = group
    shared = len(reps) < len(gain)
    if method == "auto":
        method = "lse" if len(reps) <= SERIES_MIN_ROWS else "series"
    z, aa, g = (z0[reps], a[reps], torch.zeros(len(reps), gain.shape[1], device=gain.device)) if shared else (z0, a, gain)
    if method == "lse":
        sc, n_exact = _lse_scores(z, aa, PT, g, chunk), gain.numel()
    else:
        sc, per_row = _series_scores(z, aa, PT, g, order, tol, 256)
        n_exact = int((per_row[inv] if shared else per_row).sum())
    return (gain + sc[inv] if shared else sc), n_exact


@torch.no_grad()
def importance_scores(model, trace: Trace | list[Trace], target_ids, layers=None, shared_norm: bool = False,
                      progress: bool = False, solver: Solver | str = "auto", stats: dict | None = None):
    """Exact importance score of every FFN neuron at the last position (see the module docstring).

    ``trace``: a ``Trace`` with ``resid_mid`` and ``coef`` at the last position, or a list of traces
    of models that share FFN values, final norm and unembedding (e.g. the original model and the
    model with a head ablated: the projections are then computed once for both). ``target_ids``:
    one token id per case (or, for a list of traces, one list per trace or one list for all).
    ``shared_norm=True`` freezes the final norm of EVERY trace at the first trace's statistics (the
    authors' CNA code does this: the intervened model is scored with the original model's final
    scale, so neurons the intervention cannot reach compare exactly equal). By default each trace
    uses its own real final residual.

    ``solver`` (a ``Solver`` or its method's name) says how the scores are computed.
    ``method="lse"`` computes the definition: one log-sum-exp over the vocabulary per (case,
    neuron). ``method="series"`` gets the same numbers without it: with p0 = softmax(z0)
    and d_v = a_k P_kv the logit change, ``score = a_k P_k,w - log S`` with
    ``S = sum_v p0_v exp(d_v) = 1 + sum_j a_k^j E_p0[P_k^j] / j!``. The series stops at an even
    order j: by Taylor's theorem the rest is at most ``e^D`` times the j-th term (``D = |a_k|
    max_v |P_kv|``; the j-th term is >= 0), which bounds the error of ``log S``; the series
    continues until that bound is below ``tol`` nats (at most ``order`` terms; both fields of ``Solver``). The moments
    ``E_p0[P_k^j]`` of all cases are matrix products with powers of the layer's projection, shared
    by all cases, and every score whose bound is still above ``tol`` is computed by the definition.
    The bound is on the truncation; the arithmetic is float32 (sums in float64), as exact as the
    definition's own float32 log-sum-exp (the two agree to ~1e-5 nats on real models). ``stats``, if given, gets
    the count of such neurons under "exact_neurons" and of all scores under "scores".
    ``method="auto"`` (default) takes the series for a trace with more than ``SERIES_MIN_ROWS``
    distinct inputs and the definition otherwise (the series' cost barely falls with fewer cases).
    Returns ``[cases, layers, neurons]`` float32 (a list of them for a list of traces)."""
    traces = [trace] if isinstance(trace, Trace) else list(trace)
    solver = Solver(solver) if isinstance(solver, str) else solver
    targets, sel = _checked(model, traces, target_ids, layers, solver, shared_norm)
    dev = model_device(model)
    outs = [torch.zeros(len(tr.logits), len(sel), spec(model).d_mlp) for tr in traces]
    counts = {"exact_neurons": 0, "scores": 0}
    groups = {id(tr): _same_inputs(tr, traces[0] if shared_norm else tr, sel) for tr in traces}
    for j, l in enumerate(tqdm(sel, desc="importance", disable=not progress, leave=False)):
        PT = projection(model, l)                              # [N, V]
        for tr, tgt, out in zip(traces, targets, outs):
            norm = traces[0] if shared_norm else tr
            sc, mu = norm.norm_scale.to(dev).float(), norm.norm_mean.to(dev).float()
            li = tr.layer_index(l)
            z0 = frozen_logits(model, tr.resid_mid[:, li].to(dev), sc, mu)    # [B, V]
            a = tr.coef[:, li].to(dev).float() / sc.unsqueeze(-1)             # [B, N]
            sc_l, n_exact = _layer_scores(z0, a, PT, tgt.to(dev), groups[id(tr)], solver)
            out[:, j] = sc_l.cpu()
            counts["exact_neurons"] += n_exact
            counts["scores"] += sc_l.numel()
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
