"""Checks on a real model: the default SmolLM2-135M-Instruct, or the built-in model named by the
environment variable CNA_TEST_MODEL (``make check-models`` runs them on every built-in model)."""
import os

import pytest
import torch

from cna_utils.data.arithmetic import answer_separator, arithmetic_dataset
from cna_utils.measure.evaluate import accuracy
from cna_utils.measure.interventions import ablate_heads
from cna_utils.measure.importance import importance_scores
from cna_utils.model.forward import Run
from cna_utils.measure.neurons import single_token
from cna_utils.measure.sweep import head_sweep_cases
from cna_utils.measure.tracing import frozen_logits, trace
from cna_utils.measure.vocab import concept_mask, vocab_projection
from cna_utils.model.families import ffn_values, final_norm, o_proj, spec, unembed, weight_out_in
from cna_utils.model.loading import load_model

NAME = os.environ.get("CNA_TEST_MODEL", "smollm2-135m")
SHAPES = {   # family, layers, heads, kv heads, d_model, d_mlp, vocab, tied embeddings
    "smollm2-135m": ("llama", 30, 9, 3, 576, 1536, 49152, True),
    "qwen2.5-coder-1.5b": ("llama", 28, 12, 2, 1536, 8960, 151936, False),
    "qwen2.5-coder-0.5b": ("llama", 24, 14, 2, 896, 4864, 151936, False),
}


@pytest.fixture(scope="module")
def real():
    return load_model(NAME)


def test_loads_offline_with_expected_shape(real):
    model, tok = real
    s = spec(model)
    tied = unembed(model).weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert (s.family, s.n_layers, s.n_heads, s.n_kv_heads, s.d_model, s.d_mlp, s.vocab_size, tied) == SHAPES[NAME]
    assert tok.padding_side == "left"


def test_alignment_holds_for_every_template_and_answer_form(real):
    _, tok = real
    cases = arithmetic_dataset(digits=(1, 2, 3), n=3, negative=True, tokenizer=tok)
    cases += arithmetic_dataset(digits=(1, 2, 3), n=3, tokenizer=tok, templates=[5])   # "7-8=-1" may merge "=-"
    cases += arithmetic_dataset(digits=(1, 2), n=3, negative=True, tokenizer=tok, answers="number")
    assert {(c.op, c.template, c.form, c.answer_form) for c in cases} == \
        {(op, t, f, f) for op in "+-*/" for t in (1, 2, 3, 4, 5) for f in ("number", "word")} | \
        {(op, t, "word", "number") for op in "+-*/" for t in (1, 2, 3, 4)}
    for c in cases:
        full = tok(c.prompt + answer_separator(c.template, c.answer_form) + c.answer)["input_ids"]
        assert list(c.prompt_ids) + list(c.answer_ids) == full
        assert tok.decode(list(c.answer_ids)).strip() == c.answer
        assert tok.decode([c.answer_ids[0]]).strip() != ""                     # a real token, not the space
        if c.answer_form == "number":
            assert len(c.kinds) == len(c.answer_ids)
            if c.result >= 0 and c.template != 5:                               # " -1" is one "Ġ-" token
                assert tok.decode(list(c.prompt_ids)).endswith(" ")             # the space went into the prompt
        if c.template == 5 and c.answer_form == "number":
            assert tok.decode(list(c.prompt_ids)) == c.prompt                   # "3+5=": nothing added


def test_frozen_norm_logits_and_sweep_on_real_model(real):
    model, tok = real
    cases = arithmetic_dataset(ops="+-", digits=(1,), n=3, templates=[1, 4], words=False, tokenizer=tok)
    s = spec(model)
    tr = trace(model, tok, cases, layers=[s.n_layers - 1])
    torch.testing.assert_close(frozen_logits(model, tr.resid_out[:, -1], tr.norm_scale, tr.norm_mean), tr.logits,
                               atol=1e-3, rtol=1e-4)
    heads = [(0, s.n_heads - 1), (s.n_layers // 2, 2), (s.n_layers - 1, 0)]
    sw = head_sweep_cases(model, tok, cases, heads=heads, run=Run(progress=False))
    for l, h in heads:
        with ablate_heads(model, [(l, h)]):
            ref = accuracy(model, tok, cases)
        got = sw[(sw.layer == l) & (sw["head"] == h)].sort_values("case")
        assert list(got.first_correct) == list(ref.first_correct)
        torch.testing.assert_close(torch.tensor(got.gold_logprob.values, dtype=torch.float64),
                                   torch.tensor(ref.gold_logprob.values, dtype=torch.float64),
                                   atol=1e-3, rtol=1e-4)


def test_importance_scores_match_the_definition_on_the_real_model(real):
    model, tok = real
    case = arithmetic_dataset(ops="+", digits=(1,), templates=[4], words=False, n=1, tokenizer=tok)[0]
    s = spec(model)
    tr = trace(model, tok, [case], layers=[s.n_layers * 2 // 3, s.n_layers - 2], keep=("resid_mid", "coef"))
    w = case.answer_ids[0]
    imp = importance_scores(model, tr, [w])
    for li, l in enumerate(tr.layers):
        r = tr.resid_mid[0, li]
        base = torch.log_softmax(frozen_logits(model, r, tr.norm_scale[0], tr.norm_mean[0]), -1)[w]
        for k in (0, 77, s.d_mlp - 1):
            with torch.no_grad():
                h = r + tr.coef[0, li, k] * ffn_values(model, l)[:, k]
                ref = torch.log_softmax(frozen_logits(model, h, tr.norm_scale[0], tr.norm_mean[0]), -1)[w] - base
            assert float(imp[0, li, k]) == pytest.approx(float(ref), abs=1e-4)


def test_concepts_and_projection_on_the_real_tokenizer(real):
    model, tok = real
    mask = concept_mask(tok, vocab_size=unembed(model).weight.shape[0])
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]
    for word in ("8", " eight", " VIII", " plus"):
        assert len(ids(word)) == 1 and mask[ids(word)[0]], word
    for word in (" the", "-", " house"):
        assert not mask[ids(word)[0]], word
    eight = ids("8")[0]
    v = unembed(model).weight[eight].detach() / final_norm(model).weight.detach()
    assert vocab_projection(model, tok, v, k=1) == ["8"]


def test_multi_token_target_is_refused(real):
    _, tok = real
    assert single_token(tok, "8") == tok("8", add_special_tokens=False)["input_ids"][0]
    with pytest.raises(ValueError, match="not one"):
        single_token(tok, "12")


def test_head_ablation_equals_zeroing_o_proj_columns_on_the_real_model(real):
    model, tok = real
    s = spec(model)
    cases = arithmetic_dataset(ops="+*", digits=(2,), n=2, templates=[4], words=False, tokenizer=tok)
    l, h = s.n_layers // 2, s.n_heads - 1
    with ablate_heads(model, [(l, h)]):
        hooked = accuracy(model, tok, cases).gold_logprob.values
    w = weight_out_in(o_proj(model, l))
    cols = slice(h * s.head_dim, (h + 1) * s.head_dim)
    saved = w[:, cols].detach().clone()
    with torch.no_grad():
        w[:, cols] = 0
    try:
        zeroed = accuracy(model, tok, cases).gold_logprob.values
    finally:
        with torch.no_grad():
            w[:, cols] = saved
    base = accuracy(model, tok, cases).gold_logprob.values
    torch.testing.assert_close(torch.tensor(hooked), torch.tensor(zeroed), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(torch.tensor(hooked), torch.tensor(base))     # the head does something here
