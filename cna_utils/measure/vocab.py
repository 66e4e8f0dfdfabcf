"""Reading vectors in vocabulary space, and the lexicon of number and operation concepts.

Usage::

    vocab_projection(model, tok, ffn_values(model, 28)[:, 3696], k=10)   # ['8', 'eight', ...]
    mask = concept_mask(tok)                   # [vocab] bool: the token is a number/operation concept
    count_concepts(top_ids, mask)              # concepts among each row's top tokens

The projection of a residual-stream vector v is ``E_u (g * v)``, g the final norm's weight (the
final norm's scale is a positive number per position, so it does not change the ranking).
"""
from __future__ import annotations

from importlib import resources

import torch
import yaml

from cna_utils.model.families import final_norm, unembed

__all__ = ["vocab_logits", "vocab_projection", "token_text", "load_lexicon", "concept_mask", "count_concepts"]


@torch.no_grad()
def vocab_logits(model, vectors: torch.Tensor) -> torch.Tensor:
    """``E_u (g * v)`` for vectors [..., d_model] -> [..., vocab] (float32, no unembedding bias)."""
    g = final_norm(model).weight.float()
    w = unembed(model).weight.float()
    v = torch.as_tensor(vectors).float().to(w.device)
    if v.shape[-1] != w.shape[1]:
        raise ValueError(f"vectors have size {v.shape[-1]}, the residual stream has {w.shape[1]}")
    return (v * g) @ w.t()


def token_text(tokenizer, ids) -> list[str]:
    """Readable text of each token id (leading spaces removed)."""
    return [tokenizer.decode([int(i)]).strip() or repr(tokenizer.decode([int(i)])) for i in ids]


def vocab_projection(model, tokenizer, vectors, k: int = 10, bottom: bool = False):
    """Top-k tokens of ``E_u (g * v)``: a list of k strings for one vector [d], a list of lists for
    [n, d]. ``bottom=True`` gives the k most negative tokens instead."""
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    logits = vocab_logits(model, vectors)
    ids = logits.topk(k, dim=-1, largest=not bottom).indices.cpu()
    if ids.dim() == 1:
        return token_text(tokenizer, ids)
    return [token_text(tokenizer, row) for row in ids.reshape(-1, k)]


def load_lexicon() -> dict[str, list[str]]:
    """The concept lexicon shipped with the package (``cna_utils/data/lexicon.yaml``): category -> words. Number
    words are written by num2words in the languages the file lists."""
    from num2words import num2words

    text = resources.files("cna_utils.data").joinpath("lexicon.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    spec_ = data.pop("number_words")
    out = {k: [str(w) for w in v] for k, v in data.items()}
    exclude = set(spec_.get("exclude", []))
    for lang in spec_["languages"]:
        words = {num2words(v, lang=lang) for v in spec_["values"]}
        out[f"number_words_{lang}"] = sorted(w for w in words if w not in exclude and " " not in w)
    return out


def _normal(text: str, keep_case: bool) -> str:
    t = text.strip()
    return t if keep_case else t.lower()


def concept_mask(tokenizer, lexicon: dict | None = None, vocab_size: int | None = None) -> torch.Tensor:
    """[vocab] bool: True where the token's text is a number or operation concept of the lexicon
    (case-insensitive; roman numerals upper case only). ``vocab_size`` pads to the model's
    unembedding size when the tokenizer knows fewer tokens."""
    lex = lexicon or load_lexicon()
    roman = frozenset(lex.get("roman", []))
    words = frozenset(w.lower() for cat, ws in lex.items() if cat != "roman" for w in ws)
    n = len(tokenizer)
    texts = [tokenizer.decode([i]) for i in range(n)]
    mask = torch.tensor([_normal(t, False) in words or t.strip() in roman for t in texts], dtype=torch.bool)
    if vocab_size is not None and vocab_size > n:
        mask = torch.cat([mask, torch.zeros(vocab_size - n, dtype=torch.bool)])
    return mask


def count_concepts(top_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Number of concept tokens in each row of ``top_ids`` [..., k] -> [...]."""
    return mask.to(top_ids.device)[top_ids].sum(-1)
