"""One forward that captures the paper's quantities per layer; the final norm with frozen statistics.

Usage::

    tr = trace(model, tok, ["3 + 5 = "])           # last position, every layer
    tr.resid_mid[:, 17]                            # r^17 = x^16 + A^17 at the last position: [B, d_model]
    tr.coef[:, 28, 3696]                           # coefficient score m of neuron 28_3696
    logits = frozen_logits(model, tr.resid_out[:, -1], tr.norm_scale, tr.norm_mean)   # == model logits

Captured (layer l, paper Section 3.1 notation), shapes for ``positions="last"`` / ``"all"``:

* ``resid_in``   x^{l-1}, the layer input          [B, L, d]   / [B, T, L, d]
* ``attn_out``   A^l, the attention output          [B, L, d]   / [B, T, L, d]
* ``head_in``    per-head o_proj input              [B, L, H, dh] / [B, T, L, H, dh]
* ``resid_mid``  r^l = x^{l-1} + A^l ("residual output") [B, L, d]
* ``coef``       m^l, input of down_proj / fc_out   [B, L, d_mlp]
* ``ffn_out``    F^l = sum_k m_k v_k (+ bias)       [B, L, d]
* ``resid_out``  x^l, the layer output              [B, L, d]
* ``norm_scale`` / ``norm_mean``: statistics of the final norm at x^{L-1} (RMSNorm:
  sqrt(mean(x^2) + eps), mean 0; LayerNorm: sqrt(var + eps) and the mean)  [B] / [B, T]

``L`` indexes the selected ``layers`` in order (``tr.layers`` lists them). With ``"all"``,
position t is the t-th REAL token of the prompt (padding removed; ``tr.lengths`` gives each
prompt's length; padded slots hold zeros).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from cna_utils.data.arithmetic import Case
from cna_utils.model.forward import answer_logits, encode, model_device
from cna_utils.model.hooks import attached, capture_input, capture_output
from cna_utils.model.families import (attention, check_layer, down_proj, final_norm, layers as layer_list,
                                      mlp, norm_stats, o_proj, spec, unembed)

__all__ = ["Trace", "trace", "last_logits", "NEEDS", "frozen_norm", "frozen_logits", "KEEP_ALL", "attention_pattern"]

KEEP_ALL = ("resid_in", "attn_out", "head_in", "resid_mid", "coef", "ffn_out", "resid_out")


def _quantity(name: str, doc: str) -> property:
    """A captured quantity of ``Trace`` as a read-only property documented with its shape."""
    return property(lambda self: self._get(name), doc=doc)


@dataclass
class Trace:
    """What ``trace`` captured. Axis order is fixed: batch, then (``positions="all"``) position,
    then layer (``L`` = ``layers`` in order), then the quantity's own axes. Each quantity is a
    property with its shape; one that was not kept raises an error that says how to keep it."""
    layers: list[int]
    positions: str
    lengths: torch.Tensor                 # [B] real tokens per prompt
    norm_scale: torch.Tensor              # [B] or [B, T]
    norm_mean: torch.Tensor               # [B] or [B, T]
    logits: torch.Tensor                  # [B, vocab] the model's logits at the last position
    tensors: dict = field(default_factory=dict)

    def _get(self, name: str) -> torch.Tensor:
        if name in self.tensors:
            return self.tensors[name]
        raise AttributeError(f"Trace has no {name!r}; captured: {sorted(self.tensors)} (pass keep=... to trace)")

    resid_in = _quantity("resid_in", "x^{l-1}, the layer input: [B, L, d] (\"last\") or [B, T, L, d] (\"all\")")
    attn_out = _quantity("attn_out", "A^l, the attention output: [B, L, d] or [B, T, L, d]")
    head_in = _quantity("head_in", "each head's o_proj input: [B, L, H, head_dim] or [B, T, L, H, head_dim]")
    resid_mid = _quantity("resid_mid", "r^l = x^{l-1} + A^l: [B, L, d] or [B, T, L, d]")
    coef = _quantity("coef", "m^l, the coefficient scores (down_proj's input): [B, L, d_mlp] or [B, T, L, d_mlp]")
    ffn_out = _quantity("ffn_out", "F^l, the FFN output: [B, L, d] or [B, T, L, d]")
    resid_out = _quantity("resid_out", "x^l, the layer output: [B, L, d] or [B, T, L, d]")

    def rows(self, index) -> "Trace":
        """The trace of the cases at ``index`` (a list or 1-D tensor of row numbers, repeats allowed)."""
        idx = torch.as_tensor(index, dtype=torch.long)
        return Trace(layers=list(self.layers), positions=self.positions, lengths=self.lengths[idx],
                     norm_scale=self.norm_scale[idx], norm_mean=self.norm_mean[idx], logits=self.logits[idx],
                     tensors={k: v[idx] for k, v in self.tensors.items()})

    def layer_index(self, layer: int) -> int:
        """Position of model layer ``layer`` along the L axis."""
        try:
            return self.layers.index(layer)
        except ValueError:
            raise IndexError(f"layer {layer} was not traced; traced layers: {self.layers}") from None


def frozen_norm(model, h: torch.Tensor, scale: torch.Tensor, mean: torch.Tensor | None = None) -> torch.Tensor:
    """The final norm N with statistics frozen: (h - mean) / scale * g (+ b for LayerNorm).
    h: [..., d]; scale, mean: [...]. Returns [..., d] in float32."""
    n = final_norm(model)
    y = h.float()
    if mean is not None:
        y = y - mean.float().unsqueeze(-1)
    y = y / scale.float().unsqueeze(-1) * n.weight.float()
    if getattr(n, "bias", None) is not None:
        y = y + n.bias.float()
    return y


def frozen_logits(model, h: torch.Tensor, scale: torch.Tensor, mean: torch.Tensor | None = None) -> torch.Tensor:
    """E_u N(h) with frozen norm statistics: [..., vocab]. Applied to the real final residual it
    reproduces the model's logits (tested)."""
    u = unembed(model)
    w = u.weight.float()
    out = frozen_norm(model, h, scale, mean) @ w.t()
    if getattr(u, "bias", None) is not None:
        out = out + u.bias.float()
    return out


def _token_ids(tokenizer, prompts) -> list[list[int]]:
    """Strings, aligned ``Case`` objects (their prompt ids) or token-id lists -> token-id lists."""
    seqs = []
    for p in prompts:
        if isinstance(p, str):
            seqs.append(tokenizer(p)["input_ids"])
        elif isinstance(p, Case):
            if not p.prompt_ids:
                raise ValueError("Case objects must be aligned first: align(cases, tokenizer)")
            seqs.append(list(p.prompt_ids))
        else:
            seqs.append(list(p))
    return seqs


def _capture(model, batch, sel, keep, positions, to):
    """One forward of ``batch`` with every quantity of ``keep`` captured at ``sel``'s layers, moved
    to the device ``to``: ({quantity: [B, L, ...] or [B, T, L, ...]}, last-position logits [B,
    vocab], final-norm input)."""
    s = spec(model)
    T = batch.input_ids.shape[1]
    lens = batch.attention_mask.bool().sum(-1)

    def select(x):            # [B, T, ...] left-padded -> [B, ...] last or [B, T, ...] right-padded
        if positions == "last":
            return x[:, -1].float().to(to)
        y = torch.zeros_like(x, dtype=torch.float32)
        for b in range(x.shape[0]):
            n = int(lens[b])
            y[b, :n] = x[b, T - n:].float()
        return y.to(to)

    cap: dict[tuple[str, int], torch.Tensor] = {}
    raw = {q for k in keep for q in NEEDS[k]}             # hook only what ``keep`` reads
    where_in = {"resid_in": lambda l: layer_list(model)[l], "head_in": lambda l: o_proj(model, l),
                "coef": lambda l: down_proj(model, l)}
    where_out = {"attn_out": lambda l: attention(model, l), "ffn_out": lambda l: mlp(model, l),
                 "resid_out": lambda l: layer_list(model)[l]}
    inputs = {(q, l): where_in[q](l) for q in where_in if q in raw for l in sel}
    inputs[("final_in", -1)] = final_norm(model)
    outputs = {(q, l): where_out[q](l) for q in where_out if q in raw for l in sel}
    with attached(capture_input(inputs, cap, select) + capture_output(outputs, cap, select)):
        logit = answer_logits(model, batch)[:, -1].float().to(to)
    vals = {}
    for k in keep:
        if k == "resid_mid":
            per_layer = [cap[("resid_in", l)] + cap[("attn_out", l)] for l in sel]
        elif k == "head_in":
            per_layer = [cap[(k, l)].view(*cap[(k, l)].shape[:-1], s.n_heads, s.head_dim) for l in sel]
        else:
            per_layer = [cap[(k, l)] for l in sel]
        vals[k] = torch.stack(per_layer, dim=1 if positions == "last" else 2)
    return vals, logit, cap[("final_in", -1)]


# The module inputs or outputs each quantity is computed from.
NEEDS = {"resid_in": ("resid_in",), "attn_out": ("attn_out",), "head_in": ("head_in",),
         "resid_mid": ("resid_in", "attn_out"), "coef": ("coef",), "ffn_out": ("ffn_out",),
         "resid_out": ("resid_out",)}


def last_logits(model, tokenizer, prompts, batch_size: int = 64) -> torch.Tensor:
    """The logits at each prompt's last real token, [B, vocab] float32 on the CPU: ``trace`` with
    nothing kept (only the final norm's input is hooked, for its statistics)."""
    return trace(model, tokenizer, prompts, keep=(), batch_size=batch_size).logits


@torch.no_grad()
def trace(model, tokenizer, prompts, positions: str = "last", layers=None, keep=KEEP_ALL,
          batch_size: int = 64, store: str = "cpu") -> Trace:
    """Run the model once over ``prompts`` (strings, aligned ``Case`` objects -- their prompt ids
    are used -- or token-id lists) and capture the quantities listed in the module docstring.

    ``positions``: "last" (the last real token; memory O(B x L)) or "all". ``layers``: which
    layers to keep (default all). ``keep``: which quantities (default all of ``KEEP_ALL``); only the
    modules they are read from are hooked (``last_logits`` for the logits alone).
    Tensors are float32, on the CPU (``store="cpu"``, the default: a GPU's memory stays free for
    the next forward) or left on the model's device (``store="model"``: no copies, for scoring on
    the GPU). Prompts with the same token ids run once and share
    their rows (bit for bit): chapter 7 asks one prompt for 32 professions."""
    if positions not in ("last", "all"):
        raise ValueError(f"positions must be 'last' or 'all', got {positions!r}")
    if len(prompts) == 0:
        raise ValueError("no prompts given")
    if store not in ("cpu", "model"):
        raise ValueError(f"store must be 'cpu' or 'model' (the model's device), got {store!r}")
    bad = [k for k in keep if k not in KEEP_ALL]
    if bad:
        raise ValueError(f"unknown quantities {bad}; choose from {KEEP_ALL}")
    s = spec(model)
    sel = list(range(s.n_layers)) if layers is None else sorted(set(layers))
    for l in sel:
        check_layer(model, l)
    seqs = _token_ids(tokenizer, prompts)
    first: dict[tuple, int] = {}
    inverse = [first.setdefault(tuple(q), len(first)) for q in seqs]
    if len(first) < len(seqs):
        unique = trace(model, tokenizer, [list(q) for q in first], positions, sel, keep, batch_size, store)
        return unique.rows(inverse)
    dev = model_device(model)
    to = torch.device("cpu") if store == "cpu" else dev
    out: dict[str, list] = {k: [] for k in keep}
    scales, means, logits, lengths = [], [], [], []
    for i in range(0, len(seqs), batch_size):
        batch = encode(tokenizer, seqs[i:i + batch_size], dev)
        vals, logit, final_in = _capture(model, batch, sel, keep, positions, to)
        for k in keep:
            out[k].append(vals[k])
        sc, mu = norm_stats(model, final_in)
        scales.append(sc)
        means.append(mu)
        logits.append(logit)
        lengths.append(batch.attention_mask.sum(-1).cpu())

    def cat(xs):
        if positions == "last" or xs[0].dim() < 2:
            return torch.cat(xs)
        T = max(x.shape[1] for x in xs)
        return torch.cat([torch.nn.functional.pad(x, [0, 0] * (x.dim() - 2) + [0, T - x.shape[1]]) for x in xs])

    return Trace(layers=sel, positions=positions, lengths=torch.cat(lengths), norm_scale=cat(scales),
                 norm_mean=cat(means), logits=torch.cat(logits), tensors={k: cat(v) for k, v in out.items()})


@torch.no_grad()
def attention_pattern(model, tokenizer, prompt, layer: int) -> tuple[list[str], torch.Tensor]:
    """The attention weights of every head of ``layer`` on one prompt (a string or an aligned
    ``Case``): ``(tokens, weights)`` with ``weights`` [heads, T, T], row t the distribution of
    position t over positions 0..t. The model runs once with the eager attention implementation,
    which returns the weights (the logits are the same), and is switched back afterwards."""
    check_layer(model, layer)
    ids = list(prompt.prompt_ids) if isinstance(prompt, Case) else tokenizer(prompt)["input_ids"]
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        out = model(input_ids=torch.tensor([ids], device=model_device(model)), output_attentions=True, use_cache=False)
    finally:
        model.set_attn_implementation(before)
    return [tokenizer.decode([t]) for t in ids], out.attentions[layer][0].float().cpu()
