"""Architecture families: where the paper's places live in each family, and every fact about one.

Everything else in ``cna_utils`` is written against the accessors below (pyvene-style: one small
map per family). A ``Family`` entry, built by keyword, owns all that differs between
architectures: module paths, the norm kind, how q/k/v are laid out, whether the residual is
parallel, learned position embeddings. Nothing outside this module asks which family a model is.
Supporting a new family is one ``register(Family(...), "model_type")`` call
(``tests/test_families.py`` adds a toy StableLM entry and runs the identities on it).

Places (paper Section 3.1 notation, layer ``l``):

* ``layers(model)[l]``       -- decoder block l; its input is x^{l-1}, its output x^l
* ``attention(model, l)``    -- its output is A^l (first element when the module returns a tuple)
* ``o_proj(model, l)``       -- its INPUT is the concatenation of the heads' outputs (head h = slice
  ``h*head_dim:(h+1)*head_dim``); zeroing a slice there is the paper's head intervention
* ``mlp(model, l)``          -- its output is F^l
* ``down_proj(model, l)``    -- its INPUT is the coefficient scores m^l (SwiGLU: act(gate x) * (up x))
* ``ffn_values(model, l)``   -- [d_model, d_mlp]; column k is the FFN value v_k (fc2_k in the paper)
* ``final_norm(model)``, ``unembed(model)`` -- the last norm N and E_u
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

__all__ = ["Family", "FAMILIES", "MODEL_TYPES", "register", "family", "UnsupportedModelError", "ModelSpec", "spec",
           "base_model", "layers", "attention", "o_proj", "mlp", "down_proj", "pre_ffn_norm", "pre_attn_norm",
           "final_norm", "unembed", "weight_out_in", "stores_in_out", "ffn_values", "ffn_keys", "ov_weights",
           "submodule", "check_layer", "in_layer", "norm_stats", "centred"]


class UnsupportedModelError(ValueError):
    """The model's architecture has no entry in the family map."""


@dataclass(frozen=True, kw_only=True)
class Family:
    """Where the paper's places live in one architecture family (dotted paths from the top model,
    block-relative ones from a decoder block), and the facts that differ between families."""
    name: str
    base: str                 # the model without its LM head (accepts inputs_embeds)
    layers: str               # the ModuleList of decoder blocks
    attn: str                 # its output is A^l
    o_proj: str               # its input is the heads' concatenated outputs
    mlp: str                  # its output is F^l
    down: str                 # its input is the coefficient scores
    up: str                   # fc1 (the "up" half of a gated MLP)
    gate: str | None = None   # only gated MLPs
    ln_attn: str              # the norm whose output the attention reads
    ln_mlp: str               # the norm whose output the FFN reads
    value: str                # the module that computes the values
    qkv: str = "separate"     # the value module's rows: "separate" (v only, [H_kv * head_dim, d]),
                              # "fused" ([q; k; v] blocks) or "fused_per_head" ([q_h; k_h; v_h] per head)
    final_norm: str
    norm: str                 # "rms" (RMSNorm) or "layer" (LayerNorm: mean removed, bias)
    parallel_residual: bool | str = False   # attention and FFN read the same x^{l-1}; a string names
                                            # the config attribute that decides
    position_embedding: str | None = None   # learned absolute positions (GPT-2)

    def __post_init__(self):
        if self.norm not in ("rms", "layer"):
            raise ValueError(f"family {self.name}: norm must be 'rms' or 'layer', got {self.norm!r}")
        if self.qkv not in ("separate", "fused", "fused_per_head"):
            raise ValueError(f"family {self.name}: qkv must be 'separate', 'fused' or 'fused_per_head', got {self.qkv!r}")

    def is_parallel(self, config) -> bool:
        if isinstance(self.parallel_residual, str):
            return bool(getattr(config, self.parallel_residual, False))
        return bool(self.parallel_residual)


FAMILIES = {
    # Llama, Mistral, Qwen2, SmolLM2: gated MLP, RMSNorm, grouped-query attention
    "llama": Family(name="llama", base="model", layers="model.layers", attn="self_attn", o_proj="self_attn.o_proj",
                    mlp="mlp", down="mlp.down_proj", up="mlp.up_proj", gate="mlp.gate_proj", ln_attn="input_layernorm",
                    ln_mlp="post_attention_layernorm", value="self_attn.v_proj", final_norm="model.norm", norm="rms"),
    "gpt2": Family(name="gpt2", base="transformer", layers="transformer.h", attn="attn", o_proj="attn.c_proj",
                   mlp="mlp", down="mlp.c_proj", up="mlp.c_fc", ln_attn="ln_1", ln_mlp="ln_2", value="attn.c_attn",
                   qkv="fused", final_norm="transformer.ln_f", norm="layer", position_embedding="transformer.wpe"),
    "gptj": Family(name="gptj", base="transformer", layers="transformer.h", attn="attn", o_proj="attn.out_proj",
                   mlp="mlp", down="mlp.fc_out", up="mlp.fc_in", ln_attn="ln_1", ln_mlp="ln_1", value="attn.v_proj",
                   final_norm="transformer.ln_f", norm="layer", parallel_residual=True),
    "gpt_neox": Family(name="gpt_neox", base="gpt_neox", layers="gpt_neox.layers", attn="attention",
                       o_proj="attention.dense", mlp="mlp", down="mlp.dense_4h_to_h", up="mlp.dense_h_to_4h",
                       ln_attn="input_layernorm", ln_mlp="post_attention_layernorm",
                       value="attention.query_key_value", qkv="fused_per_head", final_norm="gpt_neox.final_layer_norm",
                       norm="layer", parallel_residual="use_parallel_residual"),
}
# Hugging Face model_type -> family
MODEL_TYPES = {"llama": "llama", "mistral": "llama", "qwen2": "llama", "gpt2": "gpt2", "gptj": "gptj",
               "gpt_neox": "gpt_neox"}


def register(fam: Family, *model_types: str) -> None:
    """Support a new architecture: its ``Family`` entry, and the Hugging Face model types it covers."""
    if not model_types:
        raise ValueError(f"name the model_type(s) that family {fam.name!r} covers, e.g. register(fam, 'stablelm')")
    FAMILIES[fam.name] = fam
    MODEL_TYPES.update({t: fam.name for t in model_types})


@dataclass(frozen=True)
class ModelSpec:
    """Shape facts of a model. ``n_kv_heads < n_heads`` means grouped-query attention (GQA):
    query head h reads key/value head ``h // (n_heads // n_kv_heads)``."""
    family: str
    model_type: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_model: int
    d_mlp: int
    vocab_size: int
    norm_eps: float
    parallel_residual: bool

    @property
    def n_total_heads(self) -> int:
        return self.n_layers * self.n_heads


def family(model) -> Family:
    """The family entry of the model's architecture (``UnsupportedModelError`` if it has none)."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in MODEL_TYPES:
        raise UnsupportedModelError(
            f"architecture {model_type!r} is not supported. Supported model types: "
            f"{', '.join(sorted(MODEL_TYPES))} (Llama, Mistral, Qwen2, SmolLM2, GPT-2, GPT-J, GPT-NeoX). "
            "To add one, register a Family entry (cna_utils/model/families.py).")
    return FAMILIES[MODEL_TYPES[model_type]]


def submodule(root: nn.Module, path: str) -> nn.Module:
    """``root``'s submodule at the dotted ``path`` (a family entry's path, e.g. ``"mlp.down_proj"``)."""
    for part in path.split("."):
        root = getattr(root, part)
    return root


def spec(model) -> ModelSpec:
    """The model's shape facts (layers, heads, KV heads, head_dim, d_model, d_mlp, vocab, family)."""
    fam, c = family(model), model.config
    d_model = c.hidden_size
    n_heads = c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or d_model // n_heads
    n_kv = getattr(c, "num_key_value_heads", None) or n_heads
    d_mlp = getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or 4 * d_model
    eps = next(getattr(c, k) for k in ("rms_norm_eps", "layer_norm_epsilon", "layer_norm_eps")
               if getattr(c, k, None) is not None)
    return ModelSpec(fam.name, c.model_type, c.num_hidden_layers, n_heads, n_kv, head_dim, d_model,
                     d_mlp, c.vocab_size, float(eps), fam.is_parallel(c))


def base_model(model) -> nn.Module:
    return submodule(model, family(model).base)


def layers(model) -> nn.ModuleList:
    return submodule(model, family(model).layers)


def check_layer(model, l, what: str = "layer") -> int:
    """``l`` when it is one of the model's layers, else an ``IndexError`` that names the range
    (``what`` words it: "layer", "LoRA layer", "neuron 30_7: layer")."""
    n = model.config.num_hidden_layers
    if isinstance(l, bool) or not isinstance(l, int) or not 0 <= l < n:
        raise IndexError(f"{what} {l!r} is out of range: this model has layers 0..{n - 1}")
    return l


def in_layer(model, l: int, attr: str) -> nn.Module:
    """Layer l's module that the family entry names by ``attr`` ("attn", "mlp", "down", ...)."""
    check_layer(model, l)
    return submodule(layers(model)[l], getattr(family(model), attr))


def _accessor(attr: str, name: str, doc: str):
    def get(model, l: int) -> nn.Module:
        return in_layer(model, l, attr)
    get.__name__ = get.__qualname__ = name
    get.__doc__ = doc
    return get


attention = _accessor("attn", "attention", "Layer l's attention module; its output is A^l.")
o_proj = _accessor("o_proj", "o_proj", "Layer l's output projection; its INPUT holds the heads' outputs.")
mlp = _accessor("mlp", "mlp", "Layer l's FFN; its output is F^l.")
down_proj = _accessor("down", "down_proj", "Layer l's FFN output projection; its INPUT is the coefficient scores.")
pre_ffn_norm = _accessor("ln_mlp", "pre_ffn_norm", "The norm whose output layer l's FFN reads.")
pre_attn_norm = _accessor("ln_attn", "pre_attn_norm", "The norm whose output layer l's attention reads.")


def ov_weights(model, l: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The value-output weights of layer l's heads: ``W_V`` [H, head_dim, d_model] (GQA-expanded:
    query head h gets key/value head h // (H / H_kv)) and ``W_O`` [H, d_model, head_dim], so head
    h maps a normed vector x to ``W_O[h] @ W_V[h] @ x``. Biases are left out: they do not depend on
    the vector being transformed."""
    fam, s = family(model), spec(model)
    H, hd, d = s.n_heads, s.head_dim, s.d_model
    w = weight_out_in(in_layer(model, l, "value"))
    if fam.qkv == "fused":                        # [q; k; v], each [H * hd, d]
        wv = w[2 * H * hd:3 * H * hd].reshape(H, hd, d)
    elif fam.qkv == "fused_per_head":             # per head [q_h; k_h; v_h]
        wv = w.reshape(H, 3, hd, d)[:, 2]
    else:
        wv = w.reshape(s.n_kv_heads, hd, d)
        wv = wv.repeat_interleave(H // s.n_kv_heads, dim=0)
    wo = weight_out_in(o_proj(model, l)).reshape(d, H, hd).permute(1, 0, 2)
    return wv, wo


def final_norm(model) -> nn.Module:
    return submodule(model, family(model).final_norm)


def unembed(model) -> nn.Module:
    """E_u: the output embedding (``lm_head``; GPT-NeoX checkpoints of older versions call it ``embed_out``)."""
    return model.get_output_embeddings()


def stores_in_out(module: nn.Module) -> bool:
    """Whether a linear map stores its weight as [in_features, out_features] (GPT-2's Conv1D)."""
    return isinstance(module, Conv1D)


def weight_out_in(module: nn.Module) -> torch.Tensor:
    """The module's weight as an [out_features, in_features] VIEW (GPT-2's Conv1D stores [in, out]),
    so column k always multiplies input feature k and in-place edits reach the model."""
    w = module.weight
    return w.t() if stores_in_out(module) else w


def ffn_values(model, l: int) -> torch.Tensor:
    """FFN values of layer l: [d_model, d_mlp]; column k is v_k (the paper's fc2_k)."""
    return weight_out_in(down_proj(model, l))


def ffn_keys(model, l: int) -> dict[str, torch.Tensor]:
    """FFN keys of layer l, each [d_mlp, d_model] with the pre-FFN norm weight folded in
    (row k times g elementwise). Gated MLPs give ``{"gate": ..., "up": ...}``; others ``{"up": ...}``."""
    fam = family(model)
    g = pre_ffn_norm(model, l).weight
    keys = {"up": weight_out_in(in_layer(model, l, "up")) * g}
    if fam.gate is not None:
        keys["gate"] = weight_out_in(in_layer(model, l, "gate")) * g
    return keys


# The norms' maths, per family: the only place that asks which norm a model has.
def norm_stats(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, mean) of a norm of this model's family applied to x [..., d] (RMSNorm: the root mean
    square with eps, mean 0; LayerNorm: the standard deviation with eps, and the mean)."""
    eps = spec(model).norm_eps
    xf = x.float()
    if family(model).norm == "rms":
        return torch.sqrt(xf.pow(2).mean(-1) + eps), torch.zeros(xf.shape[:-1], device=x.device)
    return torch.sqrt(xf.var(-1, unbiased=False) + eps), xf.mean(-1)


def centred(model, x: torch.Tensor, dim: int | None = -1) -> torch.Tensor:
    """What the norm's linear part does before its weight: LayerNorm removes the mean over ``dim``
    (every element when ``dim`` is None), RMSNorm leaves x as it is."""
    if family(model).norm == "rms":
        return x
    return x - (x.mean() if dim is None else x.mean(dim, keepdim=True))
