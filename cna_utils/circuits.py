"""Weight-space paths between neurons and heads (paper Sections 4.3-4.5).

Usage::

    ov_transform(model, 15, v)                   # v through layer 15's value-output maps (all heads summed)
    ov_transform(model, 15, v, per_head=True)    # [..., H, d]: one transform per head (GQA-expanded)
    pe_dag_edges(model, ["23_418", "27_91"], coefs)   # value(lower) . key(upper) for every ordered pair
    hidden_interpretable(model, mask, ffn_layers=range(15), attn_layers=range(16))   # Table 8 search

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

from .heads import parse_heads
from .models import _family, ffn_keys, ffn_values, ov_weights, pre_attn_norm, spec
from .neurons import neuron_name, parse_neurons
from .vocab import count_concepts, vocab_logits

__all__ = ["attn_norm_linear", "ov_transform", "ov_backproject", "pe_dag_edges", "lowest_neuron",
           "hidden_interpretable", "transfer_scores"]


def attn_norm_linear(model, l: int, v: torch.Tensor, scale=None) -> torch.Tensor:
    """The linear part of layer l's pre-attention norm applied to v [..., d] (statistics frozen:
    ``scale`` is s of the real residual at that position, default 1)."""
    n = pre_attn_norm(model, l)
    x = v.float()
    if _family(model).norm == "layer":
        x = x - x.mean(-1, keepdim=True)
    x = x * n.weight.float()
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
    if _family(model).norm == "layer":
        u = u - u.mean()
    return u


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
def hidden_interpretable(model, mask: torch.Tensor, ffn_layers, attn_layers, k: int = 50, chunk: int = 512,
                         progress: bool = False) -> pd.DataFrame:
    """The paper's zero-shot search (Section 4.4): every FFN value of ``ffn_layers`` is passed
    through the value-output map of every attention layer in ``attn_layers`` ABOVE it (all heads
    summed, as the authors' code does with ``o_proj(v_proj(.))``), projected to the vocabulary,
    and the concept tokens (``mask``) among its top-k tokens are counted.

    Returns one row per neuron: ``layer``, ``neuron``, ``concepts`` (the largest count over the
    attention layers), ``attn_layer`` (where it is reached) and ``concepts_raw`` (the count for the
    untransformed value)."""
    s = spec(model)
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    ffn_layers, attn_layers = sorted(set(ffn_layers)), sorted(set(attn_layers))
    for l in ffn_layers + attn_layers:
        if not 0 <= l < s.n_layers:
            raise IndexError(f"layer {l} is out of range 0..{s.n_layers - 1}")
    frames = []
    for l in tqdm(ffn_layers, desc="hidden-interpretable search", disable=not progress, leave=False):
        vals = ffn_values(model, l).float().t()                              # [N, d]
        best = torch.full((s.d_mlp,), -1, dtype=torch.long)
        where = torch.full((s.d_mlp,), -1, dtype=torch.long)
        raw = torch.zeros(s.d_mlp, dtype=torch.long)
        for i in range(0, s.d_mlp, chunk):
            v = vals[i:i + chunk]
            raw[i:i + chunk] = count_concepts(vocab_logits(model, v).topk(k, -1).indices, mask).cpu()
            for a in attn_layers:
                if a <= l:                      # attention layer a reads the residual after FFN layer a-1
                    continue
                c = count_concepts(vocab_logits(model, ov_transform(model, a, v)).topk(k, -1).indices, mask).cpu()
                better = c > best[i:i + chunk]
                best[i:i + chunk] = torch.where(better, c, best[i:i + chunk])
                where[i:i + chunk] = torch.where(better, torch.tensor(a), where[i:i + chunk])
        frames.append(pd.DataFrame(dict(layer=l, neuron=range(s.d_mlp), concepts=best.numpy(),
                                        attn_layer=where.numpy(), concepts_raw=raw.numpy())))
    out = pd.concat(frames, ignore_index=True)
    out["name"] = [neuron_name(l, n) for l, n in zip(out.layer, out.neuron)]
    return out


@torch.no_grad()
def transfer_scores(model, tokenizer, case, head, root, positions, ffn_layers, attn_layers, top: int = 20) -> pd.DataFrame:
    """Rank shallow FFN subvalues at the operand ``positions`` by how much they feed ``root``'s keys
    along the path of paper Section 4.4: written at position p by FFN layer l, moved to the last
    position by the value-output maps of an attention layer t (l < t, all heads summed, attention
    pattern ignored as in the authors' code), read there by ``head``'s value-output map, and dotted
    with the root neuron's keys (up + gate). Every norm on the path is linear with its scale frozen
    at the real residual of its position.

    Returns the ``top`` rows by score (the best attention layer t per neuron and position), with
    the word embedding of each position scored the same way (``layer = -1``)."""
    from .neurons import neuron_name as _nn
    from .tracing import norm_stats as _norm_stats, trace as _trace

    (hl, hh), = parse_heads(model, [head])
    (rl, rk), = parse_neurons(model, [root])
    tr = _trace(model, tokenizer, [case], positions="all", keep=("resid_in", "coef"))
    n = int(tr.lengths[0])
    last = n - 1
    keys = ffn_keys(model, rl)
    key = sum(w[rk].float() for w in keys.values())
    s_head, _ = _norm_stats(model, tr.resid_in[0, last, hl])
    w_head = ov_backproject(model, hl, key, heads=[hh], scale=float(s_head))
    vals = {l: ffn_values(model, l).float() for l in ffn_layers}
    rows = []
    for t in attn_layers:
        if t >= hl:
            continue
        for p in positions:
            s_t, _ = _norm_stats(model, tr.resid_in[0, p, t])
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
                rows += [dict(layer=l, neuron=int(k), name=_nn(l, int(k)), position=p, attn_layer=t,
                              score=float(sc[k]), coef=float(m[k])) for k in best]
    df = pd.DataFrame(rows)
    df = df.sort_values("score", ascending=False).drop_duplicates(["name", "position"])
    emb = df[df.layer == -1]
    return pd.concat([df[df.layer >= 0].head(top), emb], ignore_index=True)
