"""The family map: adding an architecture is one ``register`` call, and nothing outside
``families.py`` asks which family a model is."""
import ast
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, StableLmConfig

import cna_utils as cu
from cna_utils.model.families import spec, UnsupportedModelError
import test_identities as ident
import test_neurons as neur
from cna_utils.model import families

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
    with pytest.raises(UnsupportedModelError, match="register a Family entry"):
        spec(model)


def test_a_registered_toy_family_passes_the_identities(stablelm):
    _, model = stablelm
    s = spec(model)
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


def _family_question(e) -> bool:
    """Does expression ``e`` ask which family or norm a model has (``family(m).norm``, ``s.family``,
    ``fam.name``, ``config.model_type``, ``type(m).__name__``)?"""
    if not isinstance(e, ast.Attribute):
        return False
    if e.attr in ("family", "model_type", "__name__"):
        return True
    if isinstance(e.value, ast.Call) and getattr(e.value.func, "id", None) == "family":
        return True
    return isinstance(e.value, ast.Name) and e.value.id == "fam" and e.attr in ("name", "norm")


def branches_on_a_family(source: str) -> list[int]:
    """Lines of ``source`` that compare a family, a norm kind or a class name (==, !=, in, not in)."""
    hits = []
    for n in ast.walk(ast.parse(source)):
        if isinstance(n, ast.Compare) and any(isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)) for op in n.ops) \
                and any(_family_question(x) for x in [n.left, *n.comparators]):
            hits.append(n.lineno)
    return hits


def test_the_family_check_sees_every_way_of_asking():
    for src in ('if family(model).norm == "layer": pass', "x = s.family in ('gpt2', 'gptj')",
                'if fam.name != "llama": pass', 'if type(m).__name__ == "Conv1D": pass',
                'if model.config.model_type == "gpt2": pass', 'if fam.norm == "rms": pass'):
        assert branches_on_a_family(src) == [1], src
    assert branches_on_a_family("if fam.position_embedding is None: pass") == []
    assert branches_on_a_family('if scoring.norm == "own": pass') == []          # an option, not a family


def test_no_module_outside_the_family_map_branches_on_a_family():
    pkg = Path(cu.__file__).parent
    files = [p for p in sorted(pkg.rglob("*.py")) if p.name != "families.py"]
    assert len(files) > 40 and any(p.parent.name == "publish" for p in files)       # every room, publish/ too
    hits = [f"{p.relative_to(pkg)}:{line}" for p in files for line in branches_on_a_family(p.read_text())]
    assert hits == []
