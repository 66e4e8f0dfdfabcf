"""Attribution patching: every head's ablation effect on every case, estimated from one forward and
one backward pass (Nanda 2023; AtP* of Kramar et al. 2024).

Usage::

    est = attribution_patching(model, tok, cases)                 # head_sweep's table, estimated
    long = attribution_patching_cases(model, tok, cases, method="atp*")   # one row per (layer, head, case)

Zeroing head h of layer l replaces its slice a of the o_proj input (every position) by a target
t (0, or the head's mean for ``ablation="mean"``). To first order the change of a scalar metric M
is ``sum over positions of dM/da . (t - a)``: one backward gives it for every head at once. Two
metrics are estimated for the answer's first token:

* ``gold_logprob``: log p(answer), the book's continuous measure;
* ``first_correct``: the margin m = logit(answer) - the largest other logit (the runner-up fixed
  at the unablated model's) is estimated the same way; the ablated case counts as correct when
  m + dm > 0. So the estimated table has head_sweep's ``accuracy`` and ``drop`` columns too.

``method="atp*"`` adds GradDrop, AtP*'s guard against paths that cancel (a head whose direct
effect on the answer is undone by a later layer reads as harmless to first order). The forward is
repeated once per later layer k with the gradient into block k stopped (block k reads a detached
copy of its input; the skip connection still carries the gradient), and ``graddrop`` is the mean
over every layer k of |the estimate with block k's gradient stopped| (for k at or below the head's
own layer nothing changes, so the term is |AtP|). It is a magnitude in nats, never below |AtP|
averaged: a head with large effects that cancel has a large ``graddrop`` and a small AtP. AtP*'s
other correction recomputes the attention softmax when the patched node is a head's query or key;
zeroing a head's output patches neither, so for this node it does not apply.

Also in the same pass: ``dla``, each head's direct logit attribution of the answer (its output at
the last position through o_proj, the final norm with its statistics frozen at the real residual,
and the answer's unembedding row: what the head writes into the answer's logit directly).

Every number here is an estimate; ``head_sweep`` gives the exact ones. The book uses the estimate
only to choose which heads to run exactly (``paper.heads.candidate_heads``).
"""
from __future__ import annotations


import pandas as pd
import torch
from tqdm import tqdm

from cna_utils.store.cache import artefact_path, save_atomic
from cna_utils.measure.evaluate import summarize
from cna_utils.model.families import centred, final_norm, layers, o_proj, spec, unembed, weight_out_in
from cna_utils.model.forward import answer_logits, encode, length_batches, model_device, Run
from cna_utils.model.hooks import attached, capture_input, layer_input, post, pre, pre_kwargs
from cna_utils.measure.interventions import Mean, Zero, ablation as ablation_kind
from cna_utils.measure.sweep import per_head_frame, sweep_inputs
from cna_utils.measure.tracing import norm_stats

__all__ = ["attribution_patching", "attribution_patching_cases", "merge_exact", "METHODS", "ESTIMATES", "ATP_RUN"]

METHODS = ("atp", "atp*")
# The estimate's packing when a ``Run`` leaves it open (its cache key holds the batch size).
ATP_RUN = dict(batch_size=16, rows_per_forward=128)
ESTIMATES = ("dla", "graddrop")          # columns beyond head_sweep's that the summary averages


def attribution_patching(model, tokenizer, cases, heads=None, by=("op",), **options) -> pd.DataFrame:
    """Every head's (or ``heads``') estimated ablation effect, summarised like ``head_sweep``: one row
    per (layer, head, *by) plus ``by`` = "all" rows with ``n``, ``accuracy``, ``gold_logprob``, their
    ``base_`` values, ``drop``, and the means of ``dla`` and ``graddrop`` (atp* only). ``options`` are
    those of ``attribution_patching_cases``."""
    long = attribution_patching_cases(model, tokenizer, cases, heads, **options)
    return summarize(long, by=by, keys=("layer", "head"), extra=[c for c in ESTIMATES if c in long])


def attribution_patching_cases(model, tokenizer, cases, heads=None, method: str = "atp", ablation: str = "zero",
                               means: torch.Tensor | None = None, run: Run = Run()) -> pd.DataFrame:
    """The estimate's long frame: one row per (layer, head, case) with the case's fields,
    ``gold_logprob``, ``margin`` and ``first_correct`` (= margin > 0; estimated with the head
    ablated) and their ``base_`` values (exact, the unablated model), ``dla`` and, for
    ``method="atp*"``, ``graddrop``.

    ``ablation``: "zero" (the paper's) or "mean" (``means`` from ``head_means``, or the means over
    ``cases`` when None). ``run`` (defaults ``ATP_RUN``): ``batch_size`` cases per forward; with atp*
    the batch is repeated once per later layer, at most ``rows_per_forward`` rows per forward (the
    numbers do not depend on either); ``cache_dir``: every finished batch is saved there (keyed on
    the weights, cases, heads and method), so an interrupted run resumes where it stopped."""
    run = run.filled(**ATP_RUN)
    batch_size, rows_per_forward, cache_dir = run.batch_size, run.rows_per_forward, run.cache_dir
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: use 'atp' (attribution patching) or 'atp*' (with GradDrop)")
    if type(ablation_kind(ablation)) not in (Zero, Mean):
        raise ValueError(f"attribution patching estimates replacing a head's output by a fixed value: ablation "
                         f"must be 'zero' or 'mean', not {ablation!r} (run head_sweep for other kinds)")
    cases, heads, means = sweep_inputs(model, tokenizer, cases, heads, ablation, means, "first")
    s, dev = spec(model), model_device(model)
    lays = sorted({l for l, _ in heads})
    drops = list(range(min(lays) + 1, s.n_layers)) if method == "atp*" else []
    target = {l: (means[l].to(dev).float() if means is not None else torch.zeros(s.n_heads, s.head_dim, device=dev))
              for l in lays}
    n = len(cases)
    out = {k: torch.zeros(n, s.n_layers, s.n_heads) for k in ("lp", "margin", "dla", "graddrop")}
    base = {"gold_logprob": torch.zeros(n), "margin": torch.zeros(n)}
    chunks = length_batches(cases, batch_size)
    path = artefact_path(cache_dir, "atp", model, method, str(next(model.parameters()).dtype), heads,
                         [[c.prompt_ids, c.answer_ids] for c in cases], means, batch_size, code=__name__)
    done: set[int] = set()
    if path is not None and path.exists():
        saved = torch.load(path)
        done, out, base = set(saved["done"]), saved["out"], saved["base"]
    bar = tqdm(total=len(chunks), initial=len(done), desc=f"attribution patching ({method}, batches)",
               disable=not run.progress, mininterval=10)
    for j, idx in enumerate(chunks):
        if j in done:
            continue
        batch = encode(tokenizer, [cases[i] for i in idx], dev)
        est = _estimate_batch(model, batch, lays, target, drops, rows_per_forward)
        for k, v in est["heads"].items():
            out[k][idx] = v
        base["gold_logprob"][idx] = est["base_lp"]
        base["margin"][idx] = est["base_margin"]
        done.add(j)
        if path is not None:
            save_atomic({"done": sorted(done), "out": out, "base": base}, path)
        bar.update(1)
    bar.close()
    return _long_frame(cases, heads, out, base, method)


def _estimate_batch(model, batch, lays, target, drops, rows_per_forward):
    """One batch: the plain forward + backward (both metrics, and dla), then the GradDrop replicas."""
    s, B = spec(model), len(batch)
    gold = batch.targets[:, 0]
    x, g_lp, g_m, base_lp, base_margin, scale = _forward_backward(model, batch, lays, [None], want_margin=True)
    heads = {k: torch.zeros(B, s.n_layers, s.n_heads) for k in ("lp", "margin", "dla", "graddrop")}
    for l in lays:
        delta = (target[l] - x[l].view(B, -1, s.n_heads, s.head_dim).float())          # [B, T, H, dh]
        heads["lp"][:, l] = _contract(g_lp[l][:B], delta, s)
        heads["margin"][:, l] = _contract(g_m[l], delta, s)
        heads["dla"][:, l] = _dla(model, l, x[l][:, -1], gold, scale)
    if drops:
        total = torch.zeros(B, s.n_layers, s.n_heads)
        per = max(1, rows_per_forward // B)
        for j in range(0, len(drops), per):
            part = drops[j:j + per]
            xd, gd, *_ = _forward_backward(model, batch, lays, part, want_margin=False)
            for r, k in enumerate(part):
                for l in lays:
                    if l < k:                       # block k's gradient only matters to heads below it
                        delta = (target[l] - xd[l][r * B:(r + 1) * B].view(B, -1, s.n_heads, s.head_dim).float())
                        total[:, l] += _contract(gd[l][r * B:(r + 1) * B], delta, s).abs()
        for l in lays:                              # blocks at or below the head: the estimate is AtP's
            total[:, l] += (s.n_layers - len([k for k in drops if k > l])) * heads["lp"][:, l].abs()
        heads["graddrop"] = total / s.n_layers
    else:
        heads["graddrop"] = torch.full((B, s.n_layers, s.n_heads), float("nan"))
    return dict(heads=heads, base_lp=base_lp, base_margin=base_margin)


def _contract(grad, delta, s):
    """sum over positions and head_dim of grad . delta, per row and head: [B, H] on CPU."""
    B = delta.shape[0]
    return (grad.view(B, -1, s.n_heads, s.head_dim).float() * delta).sum((1, 3)).detach().cpu()


def _forward_backward(model, batch, lays, drop, want_margin):
    """The batch repeated once per entry of ``drop`` (None: no block's gradient stopped; k: block k's),
    one forward, and the gradients of log p(answer) (and, with ``want_margin``, of the margin on the
    first replica) at every o_proj input of ``lays``. Returns (inputs, d logp, d margin, the first
    replica's log p(answer) and margin (None without ``want_margin``), final-norm scale at the answer slot)."""
    R, B = len(drop), len(batch)
    rb = batch.repeat(R) if R > 1 else batch
    store: dict = {}
    final: dict = {}

    def leaf(module, args, output):               # the graph starts at the embeddings (weights need no grad)
        return output.detach().requires_grad_(True)

    def keep(l):
        def hook(module, args):
            a = args[0]
            if not a.requires_grad:
                a = a.detach().requires_grad_(True)
            store[l] = a
            return (a,) + tuple(args[1:])
        return hook

    hooks = [post(model.get_input_embeddings(), leaf)]
    hooks += [pre(o_proj(model, l), keep(l)) for l in lays]
    for r, k in enumerate(drop):
        if k is not None:
            hooks += _stop_block_gradient(layers(model)[k], r, B, R)
    hooks += capture_input({"x": final_norm(model)}, final, lambda h: h[:B, -1].detach())
    with torch.enable_grad(), attached(hooks):
        logits = answer_logits(model, rb)                                    # [R*B, 1, V]
        logp = torch.log_softmax(logits[:, 0].float(), -1)
        gold = rb.targets[:, 0]
        rows = torch.arange(len(rb), device=logits.device)
        lp = logp[rows, gold]
        inputs = [store[l] for l in lays]
        g_lp = torch.autograd.grad(lp.sum(), inputs, retain_graph=want_margin, allow_unused=True)
        g_m = margin = None
        if want_margin:
            z = logits[:B, 0].float()
            other = z.detach().clone()
            other[rows[:B], gold[:B]] = float("-inf")
            runner = other.argmax(-1)
            margin = z[rows[:B], gold[:B]] - z[rows[:B], runner]
            g_m = torch.autograd.grad(margin.sum(), inputs, allow_unused=True)
    zeros = lambda l, g: g if g is not None else torch.zeros_like(store[l])
    g_lp = {l: zeros(l, g) for l, g in zip(lays, g_lp)}
    g_m = {l: zeros(l, g) for l, g in zip(lays, g_m)} if g_m is not None else None
    x = {l: store[l].detach() for l in lays}
    scale, _ = norm_stats(model, final["x"])
    base_margin = margin.detach().cpu() if margin is not None else None
    return x, g_lp, g_m, lp[:B].detach().cpu(), base_margin, scale


def _stop_block_gradient(block, r, B, R):
    """Hooks that stop the gradient into ``block`` for replica ``r`` of R (rows r*B..(r+1)*B): the
    block reads a detached copy of its input, and the skip connection is added back with its gradient,
    so the block's output has the same value and the gradient reaches the layers below only through
    the skip."""
    saved = {}

    def gate(device):
        g = torch.ones(R * B, 1, 1, device=device)
        g[r * B:(r + 1) * B] = 0
        return g

    def before(module, args, kwargs):
        h = layer_input(args, kwargs)
        g = gate(h.device)
        saved["h"], saved["g"] = h, g
        h_in = g * h + (1 - g) * h.detach()
        if args:
            return (h_in,) + tuple(args[1:]), kwargs
        return args, {**kwargs, "hidden_states": h_in}

    def after(module, args, output):
        h, g = saved.pop("h"), saved.pop("g")
        skip = (1 - g) * (h - h.detach())
        if isinstance(output, tuple):
            return (output[0] + skip,) + tuple(output[1:])
        return output + skip

    return [pre_kwargs(block, before), post(block, after)]


@torch.no_grad()
def _dla(model, l, a_last, gold, scale):
    """Direct logit attribution of each head of layer l to the answer: [B, H] (see the module docstring)."""
    s = spec(model)
    w_o = weight_out_in(o_proj(model, l)).float()                               # [d, H*dh]
    n = final_norm(model)
    rows = unembed(model).weight[gold].float() * n.weight.float()              # [B, d]
    rows = centred(model, rows)                                                  # LayerNorm removes the mean
    u = rows @ w_o                                                              # [B, H*dh]
    B = a_last.shape[0]
    per = (a_last.float().view(B, s.n_heads, s.head_dim) * u.view(B, s.n_heads, s.head_dim)).sum(-1)
    return (per / scale.unsqueeze(-1)).cpu()


def _long_frame(cases, heads, out, base, method) -> pd.DataFrame:
    def columns(l, h):
        margin = base["margin"] + out["margin"][:, l, h]
        cols = {"first_correct": (margin > 0).numpy(), "base_first_correct": (base["margin"] > 0).numpy(),
                "margin": margin.numpy(), "base_margin": base["margin"].numpy(),
                "gold_logprob": (base["gold_logprob"] + out["lp"][:, l, h]).numpy(),
                "base_gold_logprob": base["gold_logprob"].numpy(), "dla": out["dla"][:, l, h].numpy()}
        if method == "atp*":
            cols["graddrop"] = out["graddrop"][:, l, h].numpy()
        return cols
    return per_head_frame(cases, heads, columns)


def merge_exact(estimate: pd.DataFrame, exact: pd.DataFrame) -> pd.DataFrame:
    """Every head of an estimate's long frame, with the rows of the heads in ``exact`` (a
    ``head_sweep_cases`` frame on the same cases) replaced by the exact ones; column ``exact`` says
    which. The estimate's own columns (margin, dla, graddrop) are kept for the estimated rows only."""
    keys = ["layer", "head"]
    swept = set(map(tuple, exact[keys].drop_duplicates().to_numpy().tolist()))
    rest = estimate[[tuple(k) not in swept for k in estimate[keys].to_numpy().tolist()]].assign(exact=False)
    out = pd.concat([rest, exact.assign(exact=True)], ignore_index=True)
    return out.sort_values(["layer", "head", "case"], ignore_index=True)
