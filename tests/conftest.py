"""Tiny randomly initialised models of every supported family (no weights needed), fixed seeds."""
import random

import pytest
import torch
from transformers import (AutoModelForCausalLM, GPT2Config, GPTJConfig, GPTNeoXConfig, LlamaConfig,
                          MistralConfig, Qwen2Config)

from cna_utils.data.arithmetic import Case

VOCAB = 97


def _configs():
    common = dict(vocab_size=VOCAB, max_position_embeddings=64)
    return {
        "llama-mha": LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                                 num_key_value_heads=4, tie_word_embeddings=False, **common),
        "llama-gqa": LlamaConfig(hidden_size=48, intermediate_size=40, num_hidden_layers=3, num_attention_heads=6,
                                 num_key_value_heads=2, tie_word_embeddings=True, **common),
        "mistral": MistralConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, sliding_window=None, **common),
        "qwen2": Qwen2Config(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, **common),
        "qwen2-sliding": Qwen2Config(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                                     num_key_value_heads=2, use_sliding_window=True, sliding_window=2,
                                     max_window_layers=1, **common),
        "gpt2": GPT2Config(n_embd=32, n_layer=3, n_head=4, vocab_size=VOCAB, n_positions=64, bos_token_id=1, eos_token_id=1,
                           scale_attn_by_inverse_layer_idx=True),
        "gptj": GPTJConfig(n_embd=32, n_layer=2, n_head=4, rotary_dim=4, vocab_size=VOCAB, n_positions=64,
                           bos_token_id=1, eos_token_id=1),
        "neox-parallel": GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, use_parallel_residual=True, **common),
        "neox-sequential": GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, use_parallel_residual=False, **common),
    }


FAMILIES = list(_configs())


def make_model(name: str, seed: int = 0):
    torch.manual_seed(seed)
    cfg = _configs()[name]
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    # Random init is tiny for norms' gains (all ones); make every parameter matter a little more.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n or "ln" in n:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(params=FAMILIES)
def tiny(request):
    return request.param, make_model(request.param)


def random_cases(model, n=7, seed=0, answer_len=(1, 3), prompt_len=(3, 8), gold="argmax"):
    """Cases with random prompts of varied length (so batches are left-padded). With gold="argmax"
    each answer is the unablated model's own greedy continuation, so base accuracy is 1."""
    rng = random.Random(seed)
    cases = []
    for i in range(n):
        prompt = [rng.randrange(3, VOCAB) for _ in range(rng.randint(*prompt_len))]
        k = rng.randint(*answer_len)
        ans = []
        seq = list(prompt)
        for _ in range(k):
            with torch.no_grad():
                nxt = int(model(torch.tensor([seq])).logits[0, -1].argmax()) if gold == "argmax" else rng.randrange(VOCAB)
            ans.append(nxt)
            seq.append(nxt)
        cases.append(Case(prompt=f"p{i}", answer=f"a{i}", op="+-*/"[i % 4], digits=1 + i % 2, template=1, form="number",
                          a=i, b=i, result=0, prompt_ids=tuple(prompt), answer_ids=tuple(ans), kinds=("",) * k))
    return cases


class PadTokenizer:
    """Stand-in tokenizer for token-id cases: only the pad id and decode are used."""
    pad_token_id = 0
    eos_token_id = 0

    def decode(self, ids):
        return " ".join(f"t{i}" for i in ids)
