"""The family map: adding an architecture is one ``register`` call, and nothing outside
``families.py`` asks which family a model is."""
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, StableLmConfig

import cna_utils as cu
import test_identities as ident
import test_neurons as neur
from cna_utils import families

from conftest import VOCAB

TOY = families.Family(name="stablelm", base="model", layers="model.layers", attn="self_attn",
                      o_proj="self_attn.o_proj", mlp="mlp", down="mlp.down_proj", up="mlp.up_proj",
                      gate="mlp.gate_proj", ln_attn="input_layernorm", ln_mlp="post_attention_layernorm",
                      value="self_attn.v_proj", final_norm="model.norm", norm="layer",
                      parallel_residual="use_parallel_residual")


@pytest.fixture
def stablelm(monkeypatch):
    """A tiny StableLM (LayerNorm with bias, gated MLP, grouped-query attention), supported by one entry.
    (Its parallel-residual variant drops post_attention_layernorm: that would be a second entry.)"""
    monkeypatch.setitem(families.FAMILIES, TOY.name, TOY)
    monkeypatch.setitem(families.MODEL_TYPES, "stablelm", TOY.name)
    torch.manual_seed(0)
    cfg = StableLmConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         use_parallel_residual=False)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(0.1 * torch.randn_like(p))
    return "stablelm", model.eval()


def test_an_unregistered_architecture_gets_a_clear_error():
    model = AutoModelForCausalLM.from_config(StableLmConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48,
                                                            num_hidden_layers=1, num_attention_heads=4))
    with pytest.raises(cu.UnsupportedModelError, match="register a Family entry"):
        cu.spec(model)


def test_a_registered_toy_family_passes_the_identities(stablelm):
    _, model = stablelm
    s = cu.spec(model)
    assert (s.family, s.n_kv_heads, s.parallel_residual) == ("stablelm", 2, False)
    ident.test_hook_ablation_equals_zeroing_o_proj_columns(stablelm)
    ident.test_ffn_output_is_sum_of_subvalues(stablelm)
    ident.test_residual_stream_decomposes(stablelm)
    ident.test_frozen_final_norm_reproduces_logits(stablelm)
    neur.test_importance_scores_equal_the_definition(stablelm)


def test_register_needs_a_model_type_and_checks_its_facts():
    with pytest.raises(ValueError, match="model_type"):
        families.register(TOY)
    with pytest.raises(ValueError, match="norm must be"):
        families.Family(**{**TOY.__dict__, "norm": "batch"})


def test_no_module_outside_the_family_map_branches_on_a_family():
    pkg = Path(cu.__file__).parent
    pattern = re.compile(r"""(family|fam\.name|\.family)\s*(==|!=|\bin\b)|__name__\s*==\s*["']Conv1D""")
    hits = [f"{p.name}:{i}" for p in pkg.glob("*.py") if p.name != "families.py"
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert hits == []
