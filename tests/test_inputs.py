"""Bad input gets a clear error that says what to do."""
import pytest
import torch
from transformers import AutoModelForCausalLM, OPTConfig

from cna_utils.data.arithmetic import align, AlignmentError, arithmetic_dataset
from cna_utils.measure.evaluate import accuracy
from cna_utils.measure.importance import importance_scores, Solver
from cna_utils.measure.interventions import ablate_heads
from cna_utils.measure.sweep import head_sweep
from cna_utils.model.forward import Run
from cna_utils.measure.tracing import trace
from cna_utils.model import forward
from cna_utils.model.families import o_proj, spec, UnsupportedModelError
from cna_utils.model.loading import load_model
from cna_utils.store.profiles import get_profile

from conftest import PadTokenizer, make_model, random_cases

TOK = PadTokenizer()


def test_unknown_model_name_lists_builtins(monkeypatch):
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)   # the same error without the hub's retries
    with pytest.raises(ValueError, match="smollm2-135m") as err:
        load_model("no-such-model-anywhere-xyz")
    assert "local directory" in str(err.value)


def test_unsupported_architecture_names_supported_ones():
    model = AutoModelForCausalLM.from_config(OPTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                       ffn_dim=32, vocab_size=50, word_embed_proj_dim=16))
    with pytest.raises(UnsupportedModelError, match="llama.*gpt2|Llama, Mistral, Qwen2"):
        spec(model)


@pytest.mark.parametrize("heads", [[(3, 0)], [(0, 4)], [(-1, 0)], ["0_9"], ["seventeen_22"]])
def test_head_out_of_range(heads):
    model = make_model("llama-mha")          # 3 layers x 4 heads
    with pytest.raises((IndexError, ValueError), match="out of range|layer_head"):
        with ablate_heads(model, heads):
            pass


def test_layer_out_of_range():
    model = make_model("gpt2")
    with pytest.raises(IndexError, match="layers 0..2"):
        o_proj(model, 3)
    with pytest.raises(IndexError, match="out of range"):
        trace(model, TOK, [[1, 2, 3]], layers=[5])


def test_empty_inputs():
    model = make_model("llama-mha")
    with pytest.raises(ValueError, match="no cases"):
        accuracy(model, TOK, [])
    with pytest.raises(ValueError, match="no cases"):
        head_sweep(model, TOK, [], run=Run(progress=False))
    with pytest.raises(ValueError, match="heads is empty"):
        head_sweep(model, TOK, random_cases(model, n=2), heads=[], run=Run(progress=False))
    with pytest.raises(ValueError, match="no prompts"):
        trace(model, TOK, [])


def test_unknown_op_template_profile_method():
    with pytest.raises(ValueError, match="unknown op"):
        arithmetic_dataset(ops="+%")
    with pytest.raises(ValueError, match="unknown template"):
        arithmetic_dataset(templates=[6])
    with pytest.raises(ValueError, match="unknown digit count"):
        arithmetic_dataset(digits=(7,))
    with pytest.raises(ValueError, match="positive"):
        arithmetic_dataset(n=0)
    with pytest.raises(ValueError, match="unknown profile 'fast'.*smoke, book, paper"):
        get_profile("fast")
    model = make_model("llama-mha")
    with pytest.raises(ValueError, match=r"unknown ablation method .*use one of \['mean', 'zero'\]"):
        with ablate_heads(model, [(0, 0)], method="noise"):
            pass
    with pytest.raises(ValueError, match="head_means"):
        with ablate_heads(model, [(0, 0)], method="mean"):
            pass
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        head_sweep(model, TOK, random_cases(model, n=2), run=Run(progress=False, batch_size=0))
    with pytest.raises(ValueError, match="'auto', 'series'"):
        Solver("exact")
    with pytest.raises(ValueError, match="even number"):
        Solver("series", order=7)
    with pytest.raises(ValueError, match="'auto', 'series'"):
        importance_scores(model, trace(model, TOK, [[1, 2]]), [3], solver="exact")


def test_unaligned_case_is_refused():
    model = make_model("llama-mha")
    case = arithmetic_dataset(ops="+", digits=(1,), n=1, words=False)[0]     # no tokenizer: not aligned
    with pytest.raises(ValueError, match="align"):
        forward.encode(TOK, [case])
    assert torch.is_tensor(forward.encode(TOK, random_cases(model, n=1)).input_ids)


class WholeStringTokenizer:
    """A tokenizer whose tokens cross the prompt/answer boundary (one token per string)."""
    def __call__(self, text):
        return {"input_ids": [sum(map(ord, text)) % 1000]}

    def decode(self, ids):
        return "x"


def test_answer_that_does_not_start_a_new_token_is_refused():
    case = arithmetic_dataset(ops="+", digits=(1,), n=1, templates=[4], words=False)[0]
    with pytest.raises(AlignmentError, match="does not start a new token"):
        align([case], WholeStringTokenizer())
