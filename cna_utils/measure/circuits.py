"""Weight-space paths between neurons and heads (paper Sections 4.3-4.5).

Usage::

    ov_transform(model, 15, v)                   # v through layer 15's value-output maps (all heads summed)
    ov_transform(model, 15, v, per_head=True)    # [..., H, d]: one transform per head (GQA-expanded)
    pe_dag_edges(model, ["23_418", "27_91"], coefs)   # value(lower) . key(upper) for every ordered pair
    hidden_interpretable(model, mask, ffn_layers=range(15), attn_layers=range(16))   # Table 8 search
    transfer_scores(model, tok, case, "16_8", "23_418", positions, (range(15), range(16)))   # Table 7's path

Value-output transform. Attention head h of layer l moves a normed source vector x to
``W_O^h W_V^h x``, weighted by its attention probability. Ignoring the attention pattern (or
assuming the head attends to x's position), a vector v written at a position reaches the heads
of a later layer as ``W_O^h W_V^h N_l(v)``: N_l is layer l's pre-attention norm, linear with
its statistics frozen (RMSNorm: ``g * v / s``; LayerNorm: ``g * (v - mean(v)) / s``; the norm's
bias and the value/output biases do not depend on v and are left out). The paper calls a
shallow neuron "hidden-interpretable" when v's own vocabulary projection means nothing but this
transform's does.
"""
from __future__ import annotations


import pandas as pd
import torch
from tqdm import tqdm

from cna_utils.measure.names import neuron_name, parse_heads, parse_neurons
from cna_utils.measure.tracing import trace
from cna_utils.measure.vocab import count_concepts
from cna_utils.model.forward import Run
from cna_utils.model.families import (centred, check_layer, ffn_keys, ffn_values, final_norm, norm_stats,
                                      ov_weights, pre_attn_norm, spec, unembed)
from cna_utils.store.cache import artefact_path, load_or_compute

__all__ = ["attn_norm_linear", "ov_transform", "ov_factors", "ov_backproject", "pe_dag_edges", "lowest_neuron",
           "hidden_interpretable", "transfer_scores"]


def attn_norm_linear(model, l: int, v: torch.Tensor, scale=None) -> torch.Tensor:
    """The linear part of layer l's pre-attention norm applied to v [..., d] (statistics frozen:
    ``scale`` is s of the real residual at that position, default 1)."""
    n = pre_attn_norm(model, l)
    x = v.float()
    x = centred(model, x) * n.weight.float()
    if scale is not None:
        x = x / torch.as_tensor(scale, dtype=x.dtype).unsqueeze(-1)
    return x


@torch.no_grad()
def ov_transform(model, l: int, v: torch.Tensor, per_head: bool = False, heads=None, scale=None) -> torch.Tensor:
    """v [..., d] through layer l's value-output maps: summed over heads -> [..., d], or
    ``per_head=True`` -> [..., H, d]. ``heads`` restricts the sum to some heads of layer l."""
    wv, wo = ov_weights(model, l)
    wv, wo = wv.float(), wo.float()
    x = attn_norm_linear(model, l, v.to(wv.device), scale)
    z = torch.einsum("hed,...d->...he", wv, x)              # [..., H, hd]
    if heads is not None:
        keep = torch.zeros(wv.shape[0], dtype=torch.bool, device=z.device)
        keep[list(heads)] = True
        z = z * keep.unsqueeze(-1)
    out = torch.einsum("hde,...he->...hd", wo, z)            # [..., H, d]
    return out if per_head else out.sum(-2)


@torch.no_grad()
def ov_backproject(model, l: int, w: torch.Tensor, heads=None, scale=None) -> torch.Tensor:
    """The vector u with ``u . v == w . ov_transform(model, l, v, heads=heads, scale=scale)`` for
    every v: a read-out direction pulled back through layer l's value-output maps. w: [d] -> [d]."""
    wv, wo = ov_weights(model, l)
    wv, wo = wv.float(), wo.float()
    H = wv.shape[0]
    sel = range(H) if heads is None else list(heads)
    u = sum(wv[h].t() @ (wo[h].t() @ w.float().to(wv.device)) for h in sel)
    n = pre_attn_norm(model, l)
    u = u * n.weight.float()
    if scale is not None:
        u = u / float(scale)
    return centred(model, u, dim=None)


def _key(model, l, k):
    keys = ffn_keys(model, l)
    return {name: w[k].float() for name, w in keys.items()}


@torch.no_grad()
def pe_dag_edges(model, neurons, coefs=None, resid=None) -> pd.DataFrame:
    """Inner products between the FFN value of each lower neuron and the FFN keys of each neuron in
    a higher layer (paper Section 4.3). Gated MLPs report the up key and the gate key.

    ``coefs`` ({name: coefficient score}) adds ``subvalue_ip_sum`` = m_lower * (v . up + v . gate).
    ``resid`` ({layer: r^l at the position}, the upper layer's FFN input before its norm) adds
    ``enhance``: m_lower * sum over keys of sign(key . r^l) * (v . key), positive when the lower
    subvalue pushes each of the upper neuron's pre-activations further in the direction they
    already have (so its coefficient grows in size); ``percentile`` then ranks ``enhance`` among
    the same quantity for EVERY neuron of the upper layer (100 = the largest), otherwise it ranks
    ``ip_sum``."""
    ns = parse_neurons(model, neurons)
    rows = []
    for lo in ns:
        v = ffn_values(model, lo[0])[:, lo[1]].float()
        m = float(coefs[neuron_name(*lo)]) if coefs is not None else None
        for hi in ns:
            if hi[0] <= lo[0]:
                continue
            keys = {name: w.float() for name, w in ffn_keys(model, hi[0]).items()}
            ips = {name: w @ v for name, w in keys.items()}                       # [N] per key
            tot = sum(ips.values())
            row = dict(lower=neuron_name(*lo), upper=neuron_name(*hi), lower_layer=lo[0], upper_layer=hi[0],
                       **{f"ip_{k}": float(x[hi[1]]) for k, x in ips.items()}, ip_sum=float(tot[hi[1]]))
            rank_by = tot
            if m is not None:
                row["subvalue_ip_sum"] = m * row["ip_sum"]
            if m is not None and resid is not None:
                r = resid[hi[0]].float().to(v.device)
                signed = sum(torch.sign(keys[k] @ r) * ips[k] for k in keys) * m       # [N]
                row["enhance"] = float(signed[hi[1]])
                rank_by = signed
            row["percentile"] = float(100 * (rank_by < rank_by[hi[1]]).float().mean())
            rows.append(row)
    return pd.DataFrame(rows)


def lowest_neuron(top: pd.DataFrame, by: str = "imp_ori") -> pd.Series:
    """The paper's rule (Section 4.3): the lowest-layer neuron among a case's top neurons; if that
    layer holds several, the one with the largest importance score (column ``by``)."""
    low = top[top.layer == top.layer.min()]
    return low.sort_values(by, ascending=False).iloc[0]


@torch.no_grad()
def ov_factors(model, l: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer l's summed value-output map as a product ``A @ B`` (A [d, r], B [r, d]) of the
    smallest width r the heads allow: with grouped-query attention the query heads that share a
    key/value head share its W_V, so ``sum_h W_O[h] W_V[h] = sum_j (sum_{h in group j} W_O[h]) W_V[j]``
    and r = n_kv_heads x head_dim (256 instead of 1,536 for Qwen2.5-1.5B); without GQA r = d.
    ``ov_transform(model, l, v, scale=s) == (A @ B @ attn_norm_linear(model, l, v, s).T).T``."""
    s = spec(model)
    wv, wo = ov_weights(model, l)                        # [H, hd, d], [H, d, hd]
    group = s.n_heads // s.n_kv_heads
    wv = wv.float()[::group]                             # one W_V per key/value head: [H_kv, hd, d]
    wo = wo.float().reshape(s.n_kv_heads, group, s.d_model, s.head_dim).sum(1)       # [H_kv, d, hd]
    a = wo.permute(1, 0, 2).reshape(s.d_model, -1)       # [d, H_kv * hd]
    b = wv.reshape(-1, s.d_model)                        # [H_kv * hd, d]
    return a, b


@torch.no_grad()
def hidden_interpretable(model, mask: torch.Tensor, ffn_layers, attn_layers, k: int = 50, chunk: int = 1024,
                         above_only: bool = False, run: Run = Run(progress=False)) -> pd.DataFrame:
    """The paper's zero-shot search (Section 4.4): every FFN value of ``ffn_layers`` is passed
    through the value-output map of every attention layer in ``attn_layers`` (all heads summed, as
    the authors' code does with ``o_proj(v_proj(.))``), projected to the vocabulary, and the concept
    tokens (``mask``) among its top-k tokens are counted. The paper transforms every neuron of FFN
    layers 0-15 by every attention layer 0-16; ``above_only=True`` keeps only the attention layers
    that can read the neuron (a > its layer).

    Exact and factored: the vocabulary projection of layer a's transform is
    ``(E_u diag(g) A_a) @ (B_a N_a(v))`` with ``ov_factors``, so each (FFN layer, attention layer)
    pair costs vocabulary x r x neurons instead of vocabulary x d x neurons (6x fewer for the
    1.5B model's GQA).

    Returns one row per neuron: ``layer``, ``neuron``, ``concepts`` (the largest count over the
    attention layers), ``attn_layer`` (where it is reached), ``concepts_above`` (the largest count
    over the attention layers above the neuron only; -1 when there is none) and ``concepts_raw`` (the count for the
    untransformed value; computed only for neurons with ``concepts > 0``, the only ones a threshold
    can select, and -1 for the others). With ``run.cache_dir`` the table is saved there and a later
    call with the same weights, layers, k and concept mask loads it (it depends on no case);
    ``run.progress``: a progress bar."""
    path = artefact_path(run.cache_dir, "hidden", model, sorted(set(ffn_layers)), sorted(set(attn_layers)), k, above_only,
                         mask, suffix=".pkl", code=__name__)
    return load_or_compute(path, lambda: _hidden_interpretable(model, mask, ffn_layers, attn_layers, k, chunk,
                                                               above_only, run.progress),
                           save=lambda df, f: df.to_pickle(f), load=pd.read_pickle)


def _hidden_interpretable(model, mask, ffn_layers, attn_layers, k, chunk, above_only, progress) -> pd.DataFrame:
    s = spec(model)
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    ffn_layers, attn_layers = sorted(set(ffn_layers)), sorted(set(attn_layers))
    for l in ffn_layers + attn_layers:
        check_layer(model, l)
    e = unembed(model).weight.float() * final_norm(model).weight.float()          # [V, d] = E_u diag(g)
    mask = mask.to(e.device)
    best = {l: torch.full((s.d_mlp,), -1, dtype=torch.long) for l in ffn_layers}
    where = {l: torch.full((s.d_mlp,), -1, dtype=torch.long) for l in ffn_layers}
    above = {l: torch.full((s.d_mlp,), -1, dtype=torch.long) for l in ffn_layers}
    reads = {a: [l for l in ffn_layers if a > l or not above_only] for a in attn_layers}
    bar = tqdm(total=sum(map(len, reads.values())), desc="hidden-interpretable search", disable=not progress,
               mininterval=10)
    for a, read in reads.items():
        fa, fb = ov_factors(model, a)
        ua = e @ fa if fa.shape[1] < s.d_model else None    # [V, r]; no gain without GQA
        for l in read:
            vals = ffn_values(model, l).float().t()                              # [N, d]
            for i in range(0, s.d_mlp, chunk):
                x = attn_norm_linear(model, a, vals[i:i + chunk])
                logits = (x @ fb.t()) @ ua.t() if ua is not None else (x @ fb.t() @ fa.t()) @ e.t()
                c = count_concepts(logits.topk(k, -1).indices, mask).cpu()
                better = c > best[l][i:i + chunk]
                best[l][i:i + chunk] = torch.where(better, c, best[l][i:i + chunk])
                where[l][i:i + chunk] = torch.where(better, torch.tensor(a), where[l][i:i + chunk])
                if a > l:
                    above[l][i:i + chunk] = torch.maximum(above[l][i:i + chunk], c)
            bar.update(1)
    bar.close()
    frames = []
    for l in ffn_layers:
        raw = torch.full((s.d_mlp,), -1, dtype=torch.long)
        need = (best[l] > 0).nonzero().flatten()
        vals = ffn_values(model, l).float().t()
        for i in range(0, len(need), chunk):
            idx = need[i:i + chunk]
            raw[idx] = count_concepts((vals[idx] @ e.t()).topk(k, -1).indices, mask).cpu()
        frames.append(pd.DataFrame(dict(layer=l, neuron=range(s.d_mlp), concepts=best[l].numpy(),
                                        attn_layer=where[l].numpy(), concepts_above=above[l].numpy(),
                                        concepts_raw=raw.numpy())))
    out = pd.concat(frames, ignore_index=True)
    out["name"] = [neuron_name(l, n) for l, n in zip(out.layer, out.neuron)]
    return out


@torch.no_grad()
def transfer_scores(model, tokenizer, case, head, root, positions, layers, top: int = 20) -> pd.DataFrame:
    """Rank shallow FFN subvalues at the operand ``positions`` by how much they feed ``root``'s keys
    along the path of paper Section 4.4: written at position p by FFN layer l, moved to the last
    position by the value-output maps of an attention layer t (l < t, all heads summed, attention
    pattern ignored as in the authors' code), read there by ``head``'s value-output map, and dotted
    with the root neuron's keys (up + gate). Every norm on the path is linear with its scale frozen
    at the real residual of its position. ``layers``: (FFN layers l, attention layers t) the path
    may take.

    Returns the ``top`` rows by score (the best attention layer t per neuron and position), with
    the word embedding of each position scored the same way (``layer = -1``)."""
    ffn_layers, attn_layers = layers
    (hl, hh), = parse_heads(model, [head])
    (rl, rk), = parse_neurons(model, [root])
    tr = trace(model, tokenizer, [case], positions="all", keep=("resid_in", "coef"))
    n = int(tr.lengths[0])
    last = n - 1
    keys = ffn_keys(model, rl)
    key = sum(w[rk].float() for w in keys.values())
    s_head, _ = norm_stats(model, tr.resid_in[0, last, hl])
    w_head = ov_backproject(model, hl, key, heads=[hh], scale=float(s_head))
    vals = {l: ffn_values(model, l).float() for l in ffn_layers}
    rows = []
    for t in attn_layers:
        if t >= hl:
            continue
        for p in positions:
            s_t, _ = norm_stats(model, tr.resid_in[0, p, t])
            u = ov_backproject(model, t, w_head, scale=float(s_t))
            emb = float(tr.resid_in[0, p, 0] @ u)
            rows.append(dict(layer=-1, neuron=-1, name=f"embedding@{p}", position=p, attn_layer=t, score=emb,
                             coef=1.0))
            for l in ffn_layers:
                if l >= t:
                    continue
                m = tr.coef[0, p, l]
                sc = m * (vals[l].t() @ u)                                         # [N]
                best = sc.topk(min(top, len(sc))).indices
                rows += [dict(layer=l, neuron=int(k), name=neuron_name(l, int(k)), position=p, attn_layer=t,
                              score=float(sc[k]), coef=float(m[k])) for k in best]
    cols = ["layer", "neuron", "name", "position", "attn_layer", "score", "coef"]
    df = pd.DataFrame(rows, columns=cols)          # empty when the head is in layer 0: no path reaches it
    df = df.sort_values("score", ascending=False).drop_duplicates(["name", "position"])
    emb = df[df.layer == -1]
    return pd.concat([df[df.layer >= 0].head(top), emb], ignore_index=True)
