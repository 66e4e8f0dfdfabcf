"""Importance scores, CNA, neuron interventions and value-output transforms: identities on tiny
random models of every supported family."""
import pandas as pd
import pytest
import torch

from cna_utils.measure import tracing
from cna_utils.measure.compare import compare, Scoring
from cna_utils.measure.circuits import (attn_norm_linear, hidden_interpretable, ov_backproject, ov_factors,
                                        ov_transform, pe_dag_edges, transfer_scores)
from cna_utils.measure.evaluate import accuracy
from cna_utils.measure.interventions import ablate_heads, mask_neurons
from cna_utils.measure.importance import cna, importance_scores, Solver, top_neurons
from cna_utils.measure.neurons import coef_decrease, neuron_effects, run_masked
from cna_utils.measure.names import parse_neurons
from cna_utils.measure.tracing import frozen_logits, trace
from cna_utils.measure.vocab import count_concepts, vocab_logits, vocab_projection
from cna_utils.model.families import ffn_keys, ffn_values, final_norm, spec, unembed
from cna_utils.model.forward import Run

from conftest import PadTokenizer, make_model, random_cases

TOK = PadTokenizer()


def _trace(model, cases, **kw):
    return trace(model, TOK, [c.prompt_ids for c in cases], **kw)


def _straightforward_importance(model, tr, targets):
    """The definition, one neuron at a time: add m_k v_k to r^l, recompute the frozen-norm softmax."""
    s = spec(model)
    out = torch.zeros(len(targets), s.n_layers, s.d_mlp)
    for b, w in enumerate(targets):
        for l in range(s.n_layers):
            r = tr.resid_mid[b, l]
            sc, mu = tr.norm_scale[b], tr.norm_mean[b]
            base = torch.log_softmax(frozen_logits(model, r, sc, mu), -1)[w]
            vals = ffn_values(model, l).float()
            for k in range(s.d_mlp):
                h = r + tr.coef[b, l, k] * vals[:, k]
                out[b, l, k] = torch.log_softmax(frozen_logits(model, h, sc, mu), -1)[w] - base
    return out


def test_importance_scores_equal_the_definition(tiny):
    _, model = tiny
    cases = random_cases(model, n=3)
    targets = [c.answer_ids[0] for c in cases]
    tr = _trace(model, cases)
    fast = importance_scores(model, tr, targets, solver=Solver("lse", chunk=7))          # a chunk that does not divide d_mlp
    ref = _straightforward_importance(model, tr, targets)
    torch.testing.assert_close(fast, ref, atol=2e-5, rtol=1e-4)
    assert fast.abs().max() > 1e-3                                    # not trivially zero


def test_series_scores_equal_the_log_sum_exp_on_every_family(tiny):
    _, model = tiny
    cases = random_cases(model, n=4)
    targets = [c.answer_ids[0] for c in cases]
    tr = _trace(model, cases)
    lse = importance_scores(model, tr, targets, solver="lse")
    st = {}
    series = importance_scores(model, tr, targets, solver="series", stats=st)
    torch.testing.assert_close(series, lse, atol=2e-6, rtol=1e-5)
    assert st["scores"] == lse.numel() and st["exact_neurons"] < st["scores"]   # the series did the work
    st = {}
    auto = importance_scores(model, tr, targets, stats=st)                   # 4 distinct inputs: the series
    assert st["exact_neurons"] < st["scores"] and torch.equal(auto, series)
    st = {}
    one = importance_scores(model, tr.rows([0, 1]), targets[:2], stats=st)   # 2 distinct inputs: the definition
    assert st["exact_neurons"] == st["scores"]
    torch.testing.assert_close(one, lse[:2], atol=1e-6, rtol=1e-5)
    st = {}
    none = importance_scores(model, tr, targets, solver=Solver("series", tol=0.0), stats=st)   # no bound <= 0: all by definition
    assert st["exact_neurons"] == st["scores"]
    torch.testing.assert_close(none, lse, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("scale", [0.01, 0.3, 3.0])
def test_series_error_stays_below_its_proven_bound(scale):
    """In float64 the series scores differ from the definition by at most tol; large effects
    (scale 3: |a P| up to ~10 nats) are sent to the definition instead of being approximated."""
    from cna_utils.measure.importance import _lse_scores, _series_scores
    g = torch.Generator().manual_seed(0)
    B, N, V = 3, 300, 500
    z0 = 4 * torch.randn(B, V, generator=g, dtype=torch.float64)
    PT = torch.randn(N, V, generator=g, dtype=torch.float64)
    a = scale * torch.randn(B, N, generator=g, dtype=torch.float64) * torch.rand(B, N, generator=g, dtype=torch.float64)
    tg = torch.tensor([0, 7, 42])
    gain = a * PT[:, tg].t()
    ref = _lse_scores(z0, a, PT, gain, 64)
    for tol in (1e-6, 1e-12):
        got, per_case = _series_scores(z0, a, PT, gain, 12, tol, 64)
        n_exact = int(per_case.sum())
        assert (got - ref).abs().max() <= tol + 1e-13
        if scale == 3.0:
            assert 0 < n_exact < B * N
        if scale == 0.01:
            assert n_exact == 0


def test_trace_runs_a_repeated_prompt_once_and_copies_its_rows(tiny):
    _, model = tiny
    p, q = [c.prompt_ids for c in random_cases(model, n=2)]
    both = trace(model, TOK, [p, q])
    rep = trace(model, TOK, [p, q, p, p])
    for k in ("resid_mid", "coef", "head_in"):
        assert torch.equal(rep.tensors[k], both.tensors[k][[0, 1, 0, 0]])
    assert torch.equal(rep.logits, both.logits[[0, 1, 0, 0]])
    assert torch.equal(rep.norm_scale, both.norm_scale[[0, 1, 0, 0]])


def test_trace_keeps_what_it_is_asked_in_a_fixed_axis_order():
    model = make_model("llama-gqa")
    s = spec(model)
    prompts = [c.prompt_ids for c in random_cases(model, n=3)]
    tr = trace(model, TOK, prompts, layers=[2, 0], keep=("coef", "head_in"))
    assert tr.layers == [0, 2] and tuple(tr.coef.shape) == (3, 2, s.d_mlp)
    assert tuple(tr.head_in.shape) == (3, 2, s.n_heads, s.head_dim) and tr.coef.dtype == torch.float32
    with pytest.raises(AttributeError, match=r"no 'resid_mid'.*keep="):
        tr.resid_mid
    every = trace(model, TOK, prompts, positions="all", keep=("resid_out",))
    assert tuple(every.resid_out.shape) == (3, max(map(len, prompts)), s.n_layers, s.d_model)
    kept = trace(model, TOK, prompts, keep=("coef",), store="model")
    assert kept.coef.device == next(model.parameters()).device
    torch.testing.assert_close(kept.coef, trace(model, TOK, prompts, keep=("coef",)).coef.to(kept.coef.device))
    with pytest.raises(ValueError, match="store must be 'cpu' or 'model'"):
        trace(model, TOK, prompts, store="gpu")


@pytest.mark.parametrize("method", ["series", "lse"])
def test_one_prompt_with_many_targets_equals_each_case_scored_alone(tiny, method):
    """Cases that share their input share log S (computed once); each keeps its own target's gain."""
    _, model = tiny
    c1, c2 = random_cases(model, n=2)
    V = unembed(model).weight.shape[0]
    prompts = [c1.prompt_ids] * 3 + [c2.prompt_ids]
    targets = [c1.answer_ids[0], 3 % V, 11 % V, c2.answer_ids[0]]
    tr = trace(model, TOK, prompts)
    st = {}
    shared = importance_scores(model, tr, targets, solver=method, stats=st)
    assert st["scores"] == shared.numel()
    for b, (pr, w) in enumerate(zip(prompts, targets)):
        alone = importance_scores(model, trace(model, TOK, [pr]), [w], solver=method)
        torch.testing.assert_close(shared[b], alone[0], atol=2e-6, rtol=1e-5)
    assert (shared[0] - shared[1]).abs().max() > 1e-4                   # different targets, different scores


def test_importance_for_two_traces_shares_projection(tiny):
    _, model = tiny
    cases = random_cases(model, n=4)
    targets = [c.answer_ids[0] for c in cases]
    tr_a = _trace(model, cases)
    with ablate_heads(model, [(0, 0)]):
        tr_b = _trace(model, cases)
    a, b = importance_scores(model, [tr_a, tr_b], targets)
    torch.testing.assert_close(a, importance_scores(model, tr_a, targets))
    torch.testing.assert_close(b, importance_scores(model, tr_b, targets))
    assert cna(a, a).abs().max() == 0                              # a model compared with itself
    assert cna(a, b).abs().max() > 1e-4


def test_cna_below_ablated_layer_is_zero():
    model = make_model("llama-gqa")
    cases = random_cases(model, n=3)
    targets = [c.answer_ids[0] for c in cases]
    tr_a = _trace(model, cases)
    with ablate_heads(model, [(2, 1)]):
        tr_b = _trace(model, cases)
    d = cna(*importance_scores(model, [tr_a, tr_b], targets, shared_norm=True))
    assert d[:, :2].abs().max() < 1e-6          # layers 0, 1 see the same residual: no difference
    assert d[:, 2].abs().max() > 1e-4           # layer 2's FFN reads the ablated head's output
    own = cna(*importance_scores(model, [tr_a, tr_b], targets))
    assert own[:, :2].abs().max() > 0           # each model's own final scale: a small difference remains


def test_top_neurons_ranks_and_reports_columns():
    score = torch.zeros(2, 3, 5)
    score[0, 2, 4], score[0, 1, 0], score[1, 0, 3] = 3.0, 2.0, 1.0
    extra = torch.arange(30.).view(2, 3, 5)
    top = top_neurons(score, 2, layers=[10, 11, 12], extra=extra)
    first = top[top.case == 0]
    assert list(first.name) == ["12_4", "11_0"]
    assert list(first.extra) == [14.0, 5.0]
    assert top[top.case == 1].iloc[0]["name"] == "10_3"
    with pytest.raises(ValueError, match="positive"):
        top_neurons(score, 0)


def test_mask_neurons_equals_editing_down_proj(tiny):
    _, model = tiny
    s = spec(model)
    cases = random_cases(model, n=4)
    chosen = [(0, 1), (s.n_layers - 1, s.d_mlp - 1), (0, 3)]

    def logits():
        return _trace(model, cases, keep=()).logits

    with mask_neurons(model, chosen):
        zeroed_hook = logits()
    with mask_neurons(model, chosen, mode="keep", layers=[0, s.n_layers - 1]):
        kept_hook = logits()
    ref = logits()
    with torch.no_grad():
        saved = {l: ffn_values(model, l).clone() for l in range(s.n_layers)}
        for l, k in chosen:
            ffn_values(model, l)[:, k] = 0
        zeroed_w = logits()
        for l in range(s.n_layers):
            ffn_values(model, l).copy_(saved[l])
        for l in (0, s.n_layers - 1):
            keep = [k for ll, k in chosen if ll == l]
            drop = [k for k in range(s.d_mlp) if k not in keep]
            ffn_values(model, l)[:, drop] = 0
        kept_w = logits()
        for l in range(s.n_layers):
            ffn_values(model, l).copy_(saved[l])
    assert not torch.allclose(zeroed_hook, ref, atol=1e-5)
    torch.testing.assert_close(zeroed_hook, zeroed_w, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(kept_hook, kept_w, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits(), ref)                     # hooks are gone


def test_run_masked_rows_match_single_interventions():
    model = make_model("llama-mha")
    case = random_cases(model, n=1)[0]
    tgt = case.answer_ids[0]
    sets = [[], [(1, 2)], [(0, 0), (2, 5)]]
    out = run_masked(model, TOK, case.prompt_ids, tgt, sets, coef_layers=[1, 2])
    tr = _trace(model, [case])
    torch.testing.assert_close(out["coef"][0], tr.coef[0, 1:])
    assert out["coef"][1, 0, 2] == 0                                    # the zeroed neuron reads 0
    for r, ns in enumerate(sets):
        with mask_neurons(model, ns):
            lp = torch.log_softmax(_trace(model, [case], keep=()).logits[0], -1)[tgt]
        torch.testing.assert_close(out["logprob"][r], lp, atol=1e-5, rtol=1e-5)
    eff = neuron_effects(model, TOK, case.prompt_ids, tgt, [(1, 2), (2, 5)])
    assert eff.logprob_drop.values[0] == pytest.approx(float(out["logprob"][0] - out["logprob"][1]), abs=1e-5)


def test_bad_neurons_and_targets_raise():
    model = make_model("llama-mha")
    s = spec(model)
    with pytest.raises(IndexError, match="out of range"):
        with mask_neurons(model, [(0, s.d_mlp)]):
            pass
    with pytest.raises(IndexError, match="layer"):
        parse_neurons(model, ["9_0"])
    with pytest.raises(ValueError, match="layer_index"):
        parse_neurons(model, ["nine"])
    with pytest.raises(ValueError, match="layers"):
        with mask_neurons(model, [(0, 1)], mode="keep"):
            pass
    cases = random_cases(model, n=2)
    tr = _trace(model, cases)
    with pytest.raises(ValueError, match="one target"):
        importance_scores(model, tr, [1, 2, 3])
    with pytest.raises(IndexError, match="target ids"):
        importance_scores(model, tr, [1, 10_000])


def test_coef_decrease_is_signed_and_relative():
    before = torch.tensor([2.0, -1.0, 1.0])
    assert coef_decrease(before, before) == 0
    assert coef_decrease(before, torch.zeros(3)) == pytest.approx(100.0)
    assert coef_decrease(before, torch.tensor([1.0, -0.5, 0.5])) == pytest.approx(50.0)
    assert coef_decrease(before, 2 * before) == pytest.approx(-100.0)


def _zero_biases(model):
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias") and ("attn" in n or "attention" in n or "ln_1" in n or "input_layernorm" in n):
                p.zero_()


def test_ov_transform_is_the_attention_output_of_a_single_token(tiny):
    """With one token, attention attends to itself with weight 1: A = OV(N(x)) (biases zeroed)."""
    name, model = tiny
    _zero_biases(model)
    s = spec(model)
    ids = [[5], [17], [60]]
    for l in range(s.n_layers):
        tr = trace(model, TOK, ids, layers=[l], keep=("resid_in", "attn_out"))
        x = tr.resid_in[:, 0]
        if s.family == "llama":
            scale = torch.sqrt(x.pow(2).mean(-1) + s.norm_eps)
        else:
            scale = torch.sqrt(x.var(-1, unbiased=False) + s.norm_eps)
        got = ov_transform(model, l, x, scale=scale)
        torch.testing.assert_close(got, tr.attn_out[:, 0], atol=1e-5, rtol=1e-4)
        per_head = ov_transform(model, l, x, per_head=True, scale=scale)
        assert per_head.shape == (3, s.n_heads, s.d_model)
        torch.testing.assert_close(per_head.sum(1), got, atol=1e-6, rtol=1e-5)


def test_ov_backproject_is_the_transpose(tiny):
    _, model = tiny
    s = spec(model)
    torch.manual_seed(1)
    v, w = torch.randn(s.d_model), torch.randn(s.d_model)
    for heads in (None, [1]):
        u = ov_backproject(model, 1, w, heads=heads, scale=2.0)
        lhs = u @ v
        rhs = w @ ov_transform(model, 1, v, heads=heads, scale=torch.tensor(2.0))
        torch.testing.assert_close(lhs, rhs, atol=1e-4, rtol=1e-4)


def test_vocab_projection_of_an_unembedding_row_ranks_its_token_first():
    """Constructed case: unit-norm unembedding rows, so <e_t, e_t> beats every other token."""
    model = make_model("llama-mha")                 # untied embeddings
    with torch.no_grad():
        w = unembed(model).weight
        w.div_(w.norm(dim=-1, keepdim=True))
        g = final_norm(model).weight
    tok = PadTokenizer()
    tok.decode = lambda ids: f"t{ids[0]}"
    for t in (3, 40, 96):
        v = unembed(model).weight[t] / g
        assert vocab_projection(model, tok, v, k=3)[0] == f"t{t}"
        assert vocab_logits(model, v).argmax() == t


def test_pe_dag_edges_are_value_key_products():
    model = make_model("llama-mha")
    edges = pe_dag_edges(model, ["0_3", "2_7", "1_1"], coefs={"0_3": 2.0, "2_7": 1.0, "1_1": -1.0})
    assert set(zip(edges.lower, edges.upper)) == {("0_3", "2_7"), ("0_3", "1_1"), ("1_1", "2_7")}
    row = edges[(edges.lower == "0_3") & (edges.upper == "2_7")].iloc[0]
    v = ffn_values(model, 0)[:, 3].detach()
    keys = {k: w.detach() for k, w in ffn_keys(model, 2).items()}
    assert row.ip_up == pytest.approx(float(keys["up"][7] @ v), rel=1e-5)
    assert row.ip_gate == pytest.approx(float(keys["gate"][7] @ v), rel=1e-5)
    assert row.subvalue_ip_sum == pytest.approx(2.0 * row.ip_sum, rel=1e-5)
    assert 0 <= row.percentile <= 100
    r = torch.randn(spec(model).d_model)
    signed = pe_dag_edges(model, ["0_3", "2_7"], coefs={"0_3": 2.0, "2_7": 1.0}, resid={2: r}).iloc[0]
    expect = 2.0 * sum(float(torch.sign(keys[k][7] @ r) * (keys[k][7] @ v)) for k in keys)
    assert signed.enhance == pytest.approx(expect, rel=1e-4, abs=1e-8)


def test_ov_factors_reproduce_the_summed_transform(tiny):
    """The factored value-output map (width n_kv x head_dim under GQA) equals the per-head sum."""
    _, model = tiny
    s = spec(model)
    v = torch.randn(4, s.d_model)
    for l in range(s.n_layers):
        a, b = ov_factors(model, l)
        assert a.shape == (s.d_model, s.n_kv_heads * s.head_dim) == b.t().shape
        x = attn_norm_linear(model, l, v, torch.tensor(1.7))
        torch.testing.assert_close(x @ b.t() @ a.t(), ov_transform(model, l, v, scale=torch.tensor(1.7)),
                                   atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["llama-gqa", "gpt2"])
@pytest.mark.parametrize("above_only", [False, True])
def test_hidden_interpretable_counts_match_a_direct_projection(family, above_only):
    model = make_model(family)
    s = spec(model)
    mask = torch.zeros(s.vocab_size, dtype=torch.bool)
    mask[::3] = True
    res = hidden_interpretable(model, mask, ffn_layers=[0, 1], attn_layers=[0, 1, 2], k=10, chunk=16,
                                  above_only=above_only)
    assert len(res) == 2 * s.d_mlp
    for l in (0, 1):
        attn = [a for a in (0, 1, 2) if a > l or not above_only]
        values = ffn_values(model, l).t()
        direct = torch.stack([count_concepts(vocab_logits(model, ov_transform(model, a, values)).topk(10).indices,
                                                mask) for a in attn])                    # [attention layers, N]
        got = res[res.layer == l].sort_values("neuron")
        assert (got.concepts.values == direct.max(0).values.numpy()).all()
        assert (got.attn_layer.values == torch.tensor(attn)[direct.argmax(0)].numpy()).all()
        up = [i for i, a in enumerate(attn) if a > l]
        expect_above = direct[up].max(0).values.numpy() if up else -1
        assert (got.concepts_above.values == expect_above).all()
        raw = count_concepts(vocab_logits(model, values).topk(10).indices, mask).numpy()
        hit = got.concepts.values > 0
        assert (got.concepts_raw.values[hit] == raw[hit]).all() and (got.concepts_raw.values[~hit] == -1).all()


def test_cna_cases_matches_full_computation(tmp_path):
    """cna_cases skips the intervened model's layers below the head: same numbers as scoring all."""
    from cna_utils.paper.study import cna_cases
    model = make_model("llama-gqa")
    cases = random_cases(model, n=3)
    res = cna_cases(model, TOK, cases, "1_2", cache_dir=tmp_path)
    tr_a = _trace(model, cases)
    with ablate_heads(model, ["1_2"]):
        tr_b = _trace(model, cases)
    a, b = importance_scores(model, [tr_a, tr_b], [c.answer_ids[0] for c in cases], shared_norm=True)
    torch.testing.assert_close(res.imp_ori, a)
    torch.testing.assert_close(res.imp_inv, b, atol=1e-6, rtol=1e-5)
    again = cna_cases(model, TOK, cases, "1_2", cache_dir=tmp_path)        # loaded from the cache
    assert torch.equal(again.imp_inv, res.imp_inv) and len(list(tmp_path.iterdir())) == 1
    top = res.top(4, case=1)
    assert len(top) == 4 and (top.layer >= 1).all()


def test_transfer_scores_follow_the_stated_path():
    """Each score equals the path computed forward: m v -> OV of layer t (source position's norm)
    -> the head's OV (last position's norm) -> dot with the root's up + gate keys."""
    model = make_model("llama-gqa")                      # 3 layers: FFN 0 -> attention 1 -> head 2_1 -> root 2_5
    case = random_cases(model, n=1, prompt_len=(5, 5))[0]
    ts = transfer_scores(model, TOK, case, "2_1", "2_5", positions=[1, 3], layers=([0], [1]), top=5)
    tr = trace(model, TOK, [case], positions="all", keep=("resid_in", "coef"))
    key = sum(w[5] for w in ffn_keys(model, 2).values()).detach()
    s_head = tracing.norm_stats(model, tr.resid_in[0, -1, 2])[0]
    assert (ts.layer == -1).sum() == 2 and (ts.layer == 0).sum() == 5
    for r in ts.itertuples():
        p = r.position
        vec = tr.resid_in[0, p, 0] if r.layer < 0 else ffn_values(model, 0)[:, r.neuron].detach() * tr.coef[0, p, 0, r.neuron]
        moved = ov_transform(model, 1, vec, scale=tracing.norm_stats(model, tr.resid_in[0, p, 1])[0])
        read = ov_transform(model, 2, moved, heads=[1], scale=s_head)
        assert r.score == pytest.approx(float(key @ read), rel=1e-3, abs=1e-6)


def test_hidden_vectors_read_the_vectors_of_the_path():
    """Table 7's rows: each vector is the subvalue m v of its neuron at its position (the embedding
    for layer -1), and its "attn transform" is that vector through its attention layer's OV map with
    the position's own norm scale; the concept counts are the mask's hits in the top tokens."""
    from cna_utils.paper.neurons import hidden_vectors
    model = make_model("llama-gqa")
    case = random_cases(model, n=1, prompt_len=(5, 5))[0]
    ts = transfer_scores(model, TOK, case, "2_1", "2_5", positions=[1, 3], layers=([0], [1]), top=5)
    vocab = unembed(model).weight.shape[0]
    mask = torch.zeros(vocab, dtype=torch.bool)
    mask[torch.randperm(vocab, generator=torch.Generator().manual_seed(0))[:vocab // 3]] = True
    hv = hidden_vectors(model, TOK, case, ts, mask, per_position=2, show=3, count_top=5)
    n_neurons = sum(min(2, int(((ts.layer >= 0) & (ts.position == p)).sum())) for p in (1, 3))
    assert len(hv) == n_neurons + 2 and hv.index.str.startswith("embedding@").sum() == 2
    tr = trace(model, TOK, [case], positions="all", keep=("resid_in", "coef"))
    for name, r in hv.iterrows():
        src = ts[(ts.name == name) & (ts.position == r.position)].iloc[0]
        p = int(src.position)
        if src.layer < 0:
            vec = tr.resid_in[0, p, 0]
        else:
            vec = ffn_values(model, 0)[:, int(src.neuron)].detach() * tr.coef[0, p, 0, int(src.neuron)]
        moved = ov_transform(model, 1, vec, scale=tracing.norm_stats(model, tr.resid_in[0, p, 1])[0])
        for col, v in (("origin", vec), ("attn transform", moved)):
            assert r[col] == ", ".join(vocab_projection(model, TOK, v, k=3))
            assert r[f"concepts in top-5, {col}"] == int(mask[vocab_logits(model, v).topk(5).indices].sum())


def test_mask_keep_keeps_everything_at_full_k():
    """keep with k = every deep neuron zeroes nothing; mask with k = 0 neurons is not allowed."""
    from cna_utils.paper.study import cna_cases
    from cna_utils.paper.neurons import mask_keep
    model = make_model("llama-mha")
    cases = random_cases(model, n=2)                       # gold = the model's own argmax: all correct
    s = spec(model)
    res = cna_cases(model, TOK, cases, "1_0")
    mk = mask_keep(model, TOK, cases, res, ks=(2 * s.d_mlp, 3), deep_layers=[1, 2])
    assert mk[mk.k == 2 * s.d_mlp].keep_correct.all()
    with pytest.raises(ValueError, match="empty"):
        mask_keep(model, TOK, cases, res, ks=())


def test_cna_cache_is_not_reused_for_changed_weights(tmp_path):
    """A model with the same label but other weights (edited, fine-tuned, pruned) never loads a
    cached CNA of the original."""
    from cna_utils.paper.study import cna_cases
    model = make_model("llama-gqa")
    cases = random_cases(model, n=2)
    first = cna_cases(model, TOK, cases, "1_2", cache_dir=tmp_path)
    with torch.no_grad():
        ffn_values(model, 2).mul_(3.0)                  # same name, other weights
    second = cna_cases(model, TOK, cases, "1_2", cache_dir=tmp_path)
    assert len(list(tmp_path.glob("cna-*.pt"))) == 2
    assert not torch.allclose(first.imp_ori, second.imp_ori)
    again = cna_cases(model, TOK, cases, "1_2", cache_dir=tmp_path)   # unchanged weights: the cache is used
    assert again.seconds == second.seconds


def test_one_artefact_key_covers_the_weights_an_adapter_and_the_parts(tmp_path):
    import copy

    from peft import get_peft_model

    from cna_utils.measure import lora
    from cna_utils.store.cache import artefact_key, artefact_path, load_or_compute
    model = make_model("qwen2")
    code = "cna_utils.paper.study"
    key = artefact_key(model, "1_2", [[1, 2, 3]], code=code)
    assert key == artefact_key(model, "1_2", [[1, 2, 3]], code=code) != artefact_key(model, "1_2", [[1, 2, 4]], code=code)
    assert artefact_key(model, "1_2", [[1, 2, 3]], code="cna_utils.measure.sweep") != key    # other code, other key
    wrapped = get_peft_model(copy.deepcopy(model), lora.lora_config(model, 1))     # same base weights + an adapter
    assert artefact_key(wrapped, "1_2", [[1, 2, 3]], code=code) != key
    calls = []
    path = artefact_path(tmp_path, "x", model, torch.arange(3), code=code)
    assert load_or_compute(path, lambda: calls.append(1) or {"v": 1}) == {"v": 1}
    assert load_or_compute(path, lambda: calls.append(1) or {"v": 2}) == {"v": 1} and calls == [1]
    assert artefact_path(None, "x", model, code=code) is None and not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ValueError, match="__name__"):
        artefact_key(model, "1_2", code="__main__")


def test_hidden_interpretable_cache_is_keyed_by_the_weights(tmp_path):
    model = make_model("qwen2")
    mask = torch.zeros(spec(model).vocab_size, dtype=torch.bool)
    mask[::4] = True
    first = hidden_interpretable(model, mask, [0], [0, 1], k=8, run=Run(tmp_path))
    assert len(list(tmp_path.glob("hidden-*.pkl"))) == 1
    pd.testing.assert_frame_equal(hidden_interpretable(model, mask, [0], [0, 1], k=8, run=Run(tmp_path)), first)
    with torch.no_grad():
        ffn_values(model, 0).neg_()
    hidden_interpretable(model, mask, [0], [0, 1], k=8, run=Run(tmp_path))
    assert len(list(tmp_path.glob("hidden-*.pkl"))) == 2


@pytest.mark.parametrize("fam", ["llama-gqa", "gpt2", "qwen2"])
def test_compare_skips_only_what_is_provably_equal(fam):
    """compare(): below the intervened layer the two conditions' scores are equal at condition a's
    norm, so skipping them (same_below) changes no number; the three uses are one function."""
    model = make_model(fam)
    cases = random_cases(model, n=3, seed=11)
    cond = lambda: ablate_heads(model, ["1_1"])
    full = compare(model, TOK, cases, condition=cond)
    skip = compare(model, TOK, cases, condition=cond, scoring=Scoring(same_below=1))
    assert torch.equal(full.imp_a, skip.imp_a) and torch.equal(full.imp_b, skip.imp_b)
    assert torch.equal(full.imp_a[:, :1], full.imp_b[:, :1])            # the reason the skip is exact
    assert not torch.equal(full.imp_a[:, 1:], full.imp_b[:, 1:])
    assert torch.equal(full.score, full.imp_a - full.imp_b) and len(full.top(4, case=0)) == 4
    pred = compare(model, TOK, cases, condition=cond, scoring=Scoring(target="prediction"))
    assert pred.targets == [int(t) for t in full.traces[0].logits.argmax(-1)]
    with pytest.raises(ValueError, match="same_below needs norm='a'"):
        compare(model, TOK, cases, condition=cond, scoring=Scoring(norm="own", same_below=1))
    with pytest.raises(ValueError, match="3 cases in condition a but 2"):
        compare(model, TOK, cases, cases[:2])
    with pytest.raises(ValueError, match="target must be"):
        compare(model, TOK, cases, scoring=Scoring(target="gold answer"))


def test_compare_of_two_inputs_scores_each_at_its_own_norm():
    model = make_model("llama-gqa")
    a, b = random_cases(model, n=2, seed=1), random_cases(model, n=2, seed=2)
    c = compare(model, TOK, a, b, scoring=Scoring(norm="own"))
    tr_a, tr_b = trace(model, TOK, a, keep=("resid_mid", "coef")), trace(model, TOK, b, keep=("resid_mid", "coef"))
    targets = [x.answer_ids[0] for x in a]
    assert torch.equal(c.imp_a, importance_scores(model, tr_a, targets))
    assert torch.equal(c.imp_b, importance_scores(model, tr_b, targets))


def test_zero_shot_table_is_its_definition():
    from cna_utils.paper.hidden import accuracy_decrease, zero_shot_table
    model = make_model("llama-gqa")
    cases = random_cases(model, n=6, seed=4)                     # answers = the model's own: base accuracy 1
    d = spec(model).d_mlp
    hid = pd.DataFrame({"layer": [0] * d + [1] * d, "neuron": list(range(d)) * 2,
                        "concepts": [i % 5 for i in range(2 * d)], "concepts_above": [i % 3 for i in range(2 * d)],
                        "concepts_raw": [(i // 2) % 5 for i in range(2 * d)]})
    t = zero_shot_table(model, TOK, cases, hid, random_draws=2, seed=7, thresholds=range(3))
    gen = torch.Generator().manual_seed(7)
    for M in range(3):
        chosen = hid[hid.concepts > M]
        want = [accuracy_decrease(model, TOK, cases, hid.iloc[torch.randperm(len(hid), generator=gen)[:len(chosen)].tolist()])
                for _ in range(2)]
        col = t[f"M={M}"]
        assert col["number"] == len(chosen) and col["number, attention above only"] == int((hid.concepts_above > M).sum())
        assert col["accuracy_decrease"] == accuracy_decrease(model, TOK, cases, list(zip(chosen.layer, chosen.neuron)))
        assert col["random_decrease"] == pytest.approx(sum(want) / 2)
        assert col["raw_also_interpretable"] == int((chosen.concepts_raw > M).sum())
    with mask_neurons(model, [(0, k) for k in range(d)] + [(1, k) for k in range(d)]):
        dead = accuracy(model, TOK, cases).first_correct.mean()
    assert accuracy_decrease(model, TOK, cases, hid) == pytest.approx(100 * (1 - dead))
    with pytest.raises(ValueError, match="answers none"):
        accuracy_decrease(model, TOK, cases, [(0, 1)], base=0.0)
