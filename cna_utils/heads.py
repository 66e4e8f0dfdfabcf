"""Attention-head interventions (paper Section 3.2) and the batched all-heads sweep.

Usage::

    with ablate_heads(model, [(17, 22)]):          # zero head 22 of layer 17
        acc = accuracy(model, tok, cases)
    df = head_sweep(model, tok, cases)             # every head, one at a time, batched

The paper "intervenes the head by setting its parameters to zero". A head's only private
parameters after the attention pattern are its head_dim-wide slice of the o_proj INPUT (the
columns of o_proj's weight it multiplies), so we zero that slice with a forward pre-hook. This is
identical to zeroing those o_proj weight columns (the authors' code; ``zeroed_in_weights`` does
that, and the tests show the two agree). With grouped-query attention (GQA) query head h reads
key/value head h // (n_heads / n_kv_heads); the KV head is shared, so ablating query head h still
zeroes only h's own o_proj input slice. Zeroing slices of the o_proj OUTPUT would be wrong: those
d_model slices are not heads.

``method="mean"`` replaces the slice with its mean over a reference set instead of zero
(``head_means``): the paper leaves open whether zero ablation exaggerates effects.
"""
from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from .data import align
from .evaluate import summarize
from .forward import answer_logits, encode, length_batches, model_device, score
from .hooks import attached, capture_input, pre
from .families import layers, o_proj, spec, weight_out_in
from .models import model_label, parameter_sums, parse_pair

__all__ = ["ablate_heads", "head_means", "zeroed_in_weights", "head_sweep", "parse_heads", "head_name"]


def head_name(layer: int, head: int) -> str:
    """The paper's "layer_head" name, e.g. (17, 22) -> "17_22"."""
    return f"{layer}_{head}"


def parse_heads(model, heads) -> list[tuple[int, int]]:
    """Normalise ``[(17, 22), "15_9", ...]`` to (layer, head) tuples and check their range."""
    s = spec(model)
    if isinstance(heads, str) or (isinstance(heads, tuple) and len(heads) == 2 and isinstance(heads[0], int)):
        heads = [heads]                                   # one head: "17_22" or (17, 22)
    out = []
    for h in heads:
        l, k = parse_pair(h, "head", "layer_head", "17_22")
        if not (0 <= l < s.n_layers and 0 <= k < s.n_heads):
            raise IndexError(f"head ({l}, {k}) is out of range: this model has layers 0..{s.n_layers - 1} "
                             f"and heads 0..{s.n_heads - 1} per layer")
        out.append((l, k))
    return out


def _mask_hook(n_heads: int, head_dim: int, mask: torch.Tensor, means: torch.Tensor | None):
    """Pre-hook for o_proj. mask: [R, H] (1 keep, 0 ablate), one row per batch row (R=1 broadcasts);
    means: [H, head_dim] or None (zero ablation)."""
    def hook(module, args):
        x = args[0]                                                    # [R, T, H*dh]
        shape = x.shape
        xh = x.view(*shape[:-1], n_heads, head_dim)                    # [R, T, H, dh]
        m = mask.to(device=x.device, dtype=x.dtype).view(mask.shape[0], *([1] * (xh.dim() - 3)), n_heads, 1)
        y = xh * m
        if means is not None:
            y = y + (1 - m) * means.to(device=x.device, dtype=x.dtype)
        return (y.reshape(shape),) + tuple(args[1:])
    return hook


@contextmanager
def ablate_heads(model, heads, method: str = "zero", means: torch.Tensor | None = None):
    """Ablate the given heads while inside the block; hooks are removed on exit, even on errors.

    heads: ``[(layer, head), ...]`` or ``["17_22", ...]``. method: "zero" or "mean" (needs ``means``
    from ``head_means``: [n_layers, n_heads, head_dim])."""
    if method not in ("zero", "mean"):
        raise ValueError(f"unknown ablation method {method!r}: use 'zero' or 'mean'")
    if method == "mean" and means is None:
        raise ValueError("method='mean' needs means=head_means(model, tokenizer, reference_cases)")
    s = spec(model)
    by_layer: dict[int, list[int]] = {}
    for l, h in parse_heads(model, heads):
        by_layer.setdefault(l, []).append(h)
    hooks = []
    for l, hs in by_layer.items():
        mask = torch.ones(1, s.n_heads, device=model_device(model))
        mask[0, hs] = 0
        mu = means[l].to(mask.device) if method == "mean" else None
        hooks.append(pre(o_proj(model, l), _mask_hook(s.n_heads, s.head_dim, mask, mu)))
    with attached(hooks):
        yield model


@contextmanager
def zeroed_in_weights(model, heads):
    """The authors' intervention: zero each head's o_proj weight COLUMNS in place (restored on exit)."""
    s = spec(model)
    saved = []
    try:
        with torch.no_grad():
            for l, h in parse_heads(model, heads):
                w = weight_out_in(o_proj(model, l))                      # [d_model, H*dh] view
                cols = slice(h * s.head_dim, (h + 1) * s.head_dim)
                saved.append((w, cols, w[:, cols].clone()))
                w[:, cols] = 0
        yield model
    finally:
        with torch.no_grad():
            for w, cols, old in reversed(saved):
                w[:, cols] = old


@torch.no_grad()
def head_means(model, tokenizer, cases, batch_size: int = 64) -> torch.Tensor:
    """Mean of every head's o_proj-input slice over all real token positions of ``cases`` (the
    prompt and the teacher-forced answer tokens, as the model reads them):
    [n_layers, n_heads, head_dim]. The reference for ``method="mean"``."""
    s = spec(model)
    cases = align(cases, tokenizer)
    total = torch.zeros(s.n_layers, s.n_heads * s.head_dim, dtype=torch.float64)
    count = 0
    for idx in length_batches(cases, batch_size):
        batch = encode(tokenizer, [cases[i] for i in idx], model_device(model))
        m = batch.attention_mask.unsqueeze(-1).to(torch.float64)
        store = {}
        with attached(capture_input({l: o_proj(model, l) for l in range(s.n_layers)}, store,
                                    lambda x: (x.to(torch.float64) * m).sum((0, 1)).cpu())):
            answer_logits(model, batch)
        for l, v in store.items():
            total[l] += v
        count += int(batch.attention_mask.sum())
    return (total / count).view(s.n_layers, s.n_heads, s.head_dim).float()


def _fingerprint(model, cases, method, means) -> str:
    """Identifies a sweep's inputs: model (including a checksum of every weight, so an edited or
    fine-tuned model with the same name never reuses stale results), cases, method and means."""
    h = hashlib.sha256()
    h.update(json.dumps([model_label(model), str(spec(model)), method, str(next(model.parameters()).dtype)]).encode())
    h.update(json.dumps(parameter_sums(model)).encode())
    for c in cases:
        h.update(json.dumps([c.prompt_ids, c.answer_ids]).encode())
    if means is not None:
        h.update(means.detach().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def head_sweep(model, tokenizer, cases, heads=None, method: str = "zero", means: torch.Tensor | None = None,
               by=("op",), batch_size: int = 32, rows_per_forward: int = 512, cache_dir: str | os.PathLike | None = None,
               progress: bool = True, per_case: bool = False, answer: str = "first", min_rows: int = 64) -> pd.DataFrame:
    """Ablate every head (or ``heads``) one at a time and score ``cases`` each time.

    Batched: one baseline forward per batch of cases caches the residual stream x^{l-1}; for layer
    l, the batch is replicated once per head of that layer (each replica row has its own head
    mask in the o_proj pre-hook) and the forward STARTS at layer l from the cached residual; the LM
    head runs on the answer positions only. Up to ``rows_per_forward`` rows (cases x heads) go in
    one forward; when one layer's heads x cases make fewer than ``min_rows`` rows (a single prompt),
    consecutive layers share a forward that starts at the lowest of them. Results equal a loop of
    one hooked full forward per head (tests check it).

    ``method="mean"`` uses ``means`` or, if None, the head means over ``cases`` themselves.
    ``cache_dir``: each finished layer is saved there; a rerun with the same model, cases and method
    loads finished layers instead of recomputing them (interrupt-safe).

    Returns a DataFrame with one row per (layer, head, *by) plus ``by`` = "all" rows: ``n``,
    ``accuracy`` (first answer token), ``answer_accuracy`` (all answer tokens, teacher-forced),
    ``gold_logprob`` (mean log p of the first answer token), the same with ``base_`` for the
    unablated model, and ``drop`` = base_accuracy - accuracy (bigger = more important head).
    With ``per_case=True`` returns the long per-(head, case) frame instead.

    ``answer="first"`` (default) feeds only the prompt and scores the first answer token (the
    paper's accuracy; multi-token answers such as "one hundred and five" cost nothing extra);
    ``answer="all"`` also feeds the answer teacher-forced and adds ``answer_accuracy``.
    """
    s = spec(model)
    if len(cases) == 0:
        raise ValueError("no cases given: pass a non-empty list of cases (see arithmetic_dataset)")
    cases = align(cases, tokenizer)
    if answer not in ("first", "all"):
        raise ValueError(f"answer must be 'first' or 'all', got {answer!r}")
    if method not in ("zero", "mean"):
        raise ValueError(f"unknown ablation method {method!r}: use 'zero' or 'mean'")
    if method == "mean" and means is None:
        means = head_means(model, tokenizer, cases)       # over prompt + answer, whatever ``answer`` scores
    if answer == "first":
        cases = [replace(c, answer_ids=c.answer_ids[:1], kinds=c.kinds[:1]) for c in cases]
    heads = [(l, h) for l in range(s.n_layers) for h in range(s.n_heads)] if heads is None else parse_heads(model, heads)
    if not heads:
        raise ValueError("heads is empty: pass None for every head or a list like [(17, 22)]")
    need = sorted({l for l, _ in heads})
    dev = model_device(model)
    chunks = length_batches(cases, batch_size)

    cache = Path(cache_dir) if cache_dir is not None else None
    fp = None
    if cache is not None:                    # the weight checksum is only needed to match saved layers
        cache.mkdir(parents=True, exist_ok=True)
        fp = _fingerprint(model, cases, method, means)
    results: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
    todo: dict[int, list[int]] = {}          # layer -> heads still to compute
    kept: dict[int, dict] = {}               # layer -> saved results that match (merged into the file)
    for l in need:
        f = cache / f"layer_{l:03d}.pt" if cache is not None else None
        saved = torch.load(f) if f is not None and f.exists() else None
        kept[l] = saved["heads"] if saved is not None and saved.get("fingerprint") == fp else {}
        results.update({tuple(k): v for k, v in kept[l].items()})
        missing = [h for (ll, h) in heads if ll == l and (l, h) not in results]
        if missing:
            todo[l] = missing
    # Baseline pass: the baseline scores, and x^{l-1} cached at every layer still to sweep.
    base = {k: torch.zeros(len(cases), dtype=torch.bool if k != "gold_logprob" else torch.float32)
            for k in ("first_correct", "answer_correct", "gold_logprob")}
    resid, batches = [], []
    for idx in chunks:
        batch = encode(tokenizer, [cases[i] for i in idx], dev)
        store: dict = {}
        with attached(capture_input({l: layers(model)[l] for l in todo if l > 0}, store)):
            sc = score(answer_logits(model, batch), batch.targets)
        for k in base:
            base[k][idx] = sc[k]
        resid.append(store)
        batches.append(batch)

    # Small forwards cost mostly fixed overhead per layer call. When a layer's heads x cases are few
    # rows, consecutive layers share one forward: it starts at the lowest of them, and each row
    # zeroes its head in its own layer (rows of a higher layer recompute the layers below it, which
    # is cheap next to the saved overhead). Each layer is still a unit of the resumable cache.
    widest = max(len(c) for c in chunks)
    groups: list[list[int]] = []
    for l in todo:
        if groups and groups[-1][-1] == l - 1 and sum(len(todo[x]) for x in groups[-1]) * widest < min_rows:
            groups[-1].append(l)
        else:
            groups.append([l])
    bar = tqdm(total=len(todo) * len(chunks), desc="head sweep (layer x batch)", disable=not progress, mininterval=10)
    for group_layers in groups:
        ghead = [(l, h) for l in group_layers for h in todo[l]]
        per_head = {lh: {k: torch.zeros_like(v) for k, v in base.items()} for lh in ghead}
        for idx, batch, store in zip(chunks, batches, resid):
            B = len(idx)
            k = max(1, rows_per_forward // B)
            for j in range(0, len(ghead), k):
                part = ghead[j:j + k]
                start = min(l for l, _ in part)
                hooks = []
                for l in sorted({l for l, _ in part}):
                    mask = torch.ones(len(part) * B, s.n_heads, device=dev)
                    for r, (ll, h) in enumerate(part):
                        if ll == l:
                            mask[r * B:(r + 1) * B, h] = 0
                    hooks.append(pre(o_proj(model, l), _mask_hook(s.n_heads, s.head_dim, mask,
                                                                   means[l].to(dev) if method == "mean" else None)))
                rb = batch.repeat(len(part))
                with attached(hooks):
                    if start == 0:
                        logits = answer_logits(model, rb)
                    else:
                        logits = answer_logits(model, rb, start_layer=start, resid=store[start].repeat(len(part), 1, 1))
                sc = score(logits, rb.targets)
                for r, lh in enumerate(part):
                    for key in per_head[lh]:
                        per_head[lh][key][idx] = sc[key][r * B:(r + 1) * B]
            bar.update(len(group_layers))
        results.update(per_head)
        if cache is not None:
            for l in group_layers:
                tmp = cache / f"layer_{l:03d}.pt.tmp"
                torch.save({"fingerprint": fp, "heads": {**kept[l], **{lh: v for lh, v in per_head.items() if lh[0] == l}}},
                           tmp)
                os.replace(tmp, cache / f"layer_{l:03d}.pt")
    bar.close()

    info = pd.DataFrame([c.to_row() for c in cases])
    frames = []
    for (l, h) in heads:
        r = results[(l, h)]
        f = info.copy()
        f.insert(0, "case", range(len(cases)))
        f.insert(0, "head", h)
        f.insert(0, "layer", l)
        for key, v in r.items():
            f[key] = v.numpy()
            f["base_" + key] = base[key].numpy()
        frames.append(f)
    long = pd.concat(frames, ignore_index=True)
    if answer == "first":                      # identical to first_correct: do not report it twice
        long = long.drop(columns=["answer_correct", "base_answer_correct"])
    if per_case:
        return long
    return summarize(long, by=by, keys=("layer", "head"))
