"""Mathematical identities on tiny random models of every supported family."""
import dataclasses

import pytest
import torch

from cna_utils.measure import tracing
from cna_utils.measure.evaluate import accuracy
from cna_utils.measure.interventions import ablate_heads, head_means, mask_neurons, zeroed_in_weights
from cna_utils.measure.sweep import head_sweep, head_sweep_cases
from cna_utils.model.forward import Run
from cna_utils.measure.tracing import attention_pattern, frozen_logits, trace
from cna_utils.model import families, forward
from cna_utils.model.families import (down_proj, ffn_values, final_norm, mlp, o_proj, pre_ffn_norm, spec,
                                      unembed, weight_out_in)
from cna_utils.model.forward import answer_logits, answer_logprobs, encode, score

from conftest import FAMILIES, PadTokenizer, make_model, random_cases

TOK = PadTokenizer()


def full_logits(model, cases):
    """[B, S, V] logits at the answer slots of one left-padded batch."""
    with torch.no_grad():
        return answer_logits(model, encode(TOK, cases))


def test_spec_reads_shapes(tiny):
    name, model = tiny
    s = spec(model)
    assert s.n_layers == model.config.num_hidden_layers
    assert s.n_heads * s.head_dim == weight_out_in(o_proj(model, 0)).shape[1]
    assert ffn_values(model, 0).shape == (s.d_model, s.d_mlp)
    assert s.vocab_size == unembed(model).weight.shape[0]
    if name == "llama-gqa":
        assert (s.n_heads, s.n_kv_heads) == (6, 2)


def test_hook_ablation_equals_zeroing_o_proj_columns(tiny):
    """The paper's intervention: the o_proj-input pre-hook == the authors' zeroed weight columns."""
    name, model = tiny
    cases = random_cases(model)
    s = spec(model)
    for heads in ([(0, 1)], [(s.n_layers - 1, s.n_heads - 1), (1, 0)]):
        with ablate_heads(model, heads):
            hooked = full_logits(model, cases)
        with zeroed_in_weights(model, heads):
            zeroed = full_logits(model, cases)
        assert not torch.allclose(hooked, full_logits(model, cases), atol=1e-4)   # the ablation did something
        torch.testing.assert_close(hooked, zeroed, atol=1e-5, rtol=1e-5)


def test_zeroed_in_weights_restores_weights(tiny):
    _, model = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with zeroed_in_weights(model, [(0, 0), (1, 2)]):
        pass
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_gqa_ablation_touches_only_own_slice():
    """With GQA, ablating query head h zeroes h's o_proj input slice only, not its KV group."""
    model = make_model("llama-gqa")
    s = spec(model)
    cases = random_cases(model, n=3)
    with ablate_heads(model, [(1, 4)]):
        tr = trace(model, TOK, [c.prompt_ids for c in cases], positions="all", layers=[1], keep=("head_in",))
    ref = trace(model, TOK, [c.prompt_ids for c in cases], positions="all", layers=[1], keep=("head_in",))
    h = tr.head_in[:, :, 0]                                    # [B, T, H, dh]
    assert torch.all(h[:, :, 4] == 0)
    group = [k for k in range(s.n_heads) if k // (s.n_heads // s.n_kv_heads) == 4 // (s.n_heads // s.n_kv_heads)]
    for k in group:
        if k != 4:
            torch.testing.assert_close(h[:, :, k], ref.head_in[:, :, 0, k])
            assert h[:, :, k].abs().sum() > 0


@pytest.mark.parametrize("min_rows", [0, 64], ids=["layer-per-forward", "layers-share-forwards"])
def test_head_sweep_equals_loop_of_hooked_forwards(tiny, min_rows):
    name, model = tiny
    cases = random_cases(model, n=9, seed=1)
    s = spec(model)
    heads = [(l, h) for l in range(s.n_layers) for h in range(s.n_heads)]
    packed = Run(progress=False, batch_size=4, rows_per_forward=8, min_rows=min_rows)
    sweep = head_sweep_cases(model, TOK, cases, heads=heads, answer="all", run=packed)
    for (l, h) in heads:
        with ablate_heads(model, [(l, h)]):
            lg = full_logits(model, cases)
        sc = forward.score(lg, encode(TOK, cases).targets)
        got = sweep[(sweep.layer == l) & (sweep["head"] == h)].sort_values("case")
        torch.testing.assert_close(torch.tensor(got.gold_logprob.values), sc["gold_logprob"], atol=1e-4, rtol=1e-4)
        assert list(got.first_correct) == sc["first_correct"].tolist()
        assert list(got.answer_correct) == sc["answer_correct"].tolist()
    assert sweep.base_first_correct.all()                       # gold = the model's own greedy answer
    first = head_sweep_cases(model, TOK, cases, heads=heads, run=packed)     # answer="first": prompt only, same first token
    assert list(first.first_correct) == list(sweep.first_correct)
    torch.testing.assert_close(torch.tensor(first.gold_logprob.values), torch.tensor(sweep.gold_logprob.values),
                               atol=1e-4, rtol=1e-4)
    # every ablation changes the scores (so the equality above is not trivially base == base)
    assert ((sweep.gold_logprob - sweep.base_gold_logprob).abs().groupby([sweep.layer, sweep["head"]]).max() > 1e-4).all()


def test_mean_ablation_sweep_equals_loop(tiny):
    name, model = tiny
    cases = random_cases(model, n=5, seed=2)
    means = head_means(model, TOK, cases)
    heads = [(0, 1), (1, 0)]
    sweep = head_sweep_cases(model, TOK, cases, heads=heads, method="mean", means=means, run=Run(progress=False))
    for (l, h) in heads:
        with ablate_heads(model, [(l, h)], method="mean", means=means):
            sc = forward.score(full_logits(model, cases), encode(TOK, cases).targets)
        got = sweep[(sweep.layer == l) & (sweep["head"] == h)].sort_values("case")
        torch.testing.assert_close(torch.tensor(got.gold_logprob.values), sc["gold_logprob"], atol=1e-4, rtol=1e-4)


def test_mean_ablation_sets_slice_to_mean():
    model = make_model("llama-mha")
    cases = random_cases(model, n=4)
    means = head_means(model, TOK, cases)
    with ablate_heads(model, ["1_2"], method="mean", means=means):
        tr = trace(model, TOK, [c.prompt_ids for c in cases], layers=[1], keep=("head_in",))
    torch.testing.assert_close(tr.head_in[:, 0, 2], means[1, 2].expand(len(cases), -1))
    # and the means are the average over real positions
    seqs = [c.prompt_ids + c.answer_ids[:-1] for c in cases]          # what the model reads (teacher-forced)
    full = trace(model, TOK, seqs, positions="all", layers=[1], keep=("head_in",))
    real = torch.cat([full.head_in[b, :int(full.lengths[b]), 0] for b in range(len(cases))])
    torch.testing.assert_close(means[1], real.mean(0))


def test_ffn_output_is_sum_of_subvalues(tiny):
    """F^l == sum_k m_k v_k (+ the output bias) == the MLP module applied to its input."""
    _, model = tiny
    s = spec(model)
    tr = trace(model, TOK, [c.prompt_ids for c in random_cases(model)], positions="all")
    for l in range(s.n_layers):
        v = ffn_values(model, l).detach()                        # [d, N]
        bias = getattr(down_proj(model, l), "bias", None)
        recon = tr.coef[:, :, l] @ v.T + (bias.detach() if bias is not None else 0)
        torch.testing.assert_close(tr.ffn_out[:, :, l], recon, atol=1e-5, rtol=1e-4)
        # recompute the FFN from what it reads: norm(r^l) (sequential) or norm(x^{l-1}) (parallel)
        src = tr.resid_in[:, :, l] if s.parallel_residual else tr.resid_mid[:, :, l]
        with torch.no_grad():
            again = mlp(model, l)(pre_ffn_norm(model, l)(src))
        real = torch.arange(src.shape[1]) < tr.lengths[:, None]             # padded slots hold zeros
        torch.testing.assert_close(tr.ffn_out[:, :, l][real], again[real], atol=1e-5, rtol=1e-4)


def test_residual_stream_decomposes(tiny):
    """x^l == x^{l-1} + A^l + F^l (both the sequential and the parallel form), and x^l feeds layer l+1."""
    _, model = tiny
    s = spec(model)
    tr = trace(model, TOK, [c.prompt_ids for c in random_cases(model)])
    torch.testing.assert_close(tr.resid_out, tr.resid_in + tr.attn_out + tr.ffn_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tr.resid_mid, tr.resid_in + tr.attn_out)
    torch.testing.assert_close(tr.resid_out[:, :-1], tr.resid_in[:, 1:])
    # A^l is o_proj applied to the per-head outputs
    o = o_proj(model, 0)
    with torch.no_grad():
        torch.testing.assert_close(o(tr.head_in[:, 0].flatten(-2)), tr.attn_out[:, 0], atol=1e-5, rtol=1e-5)
    assert tr.head_in.shape[-2:] == (s.n_heads, s.head_dim)


def test_frozen_final_norm_reproduces_logits(tiny):
    _, model = tiny
    cases = random_cases(model)
    tr = trace(model, TOK, [c.prompt_ids for c in cases], positions="all")
    for b, c in enumerate(cases):
        with torch.no_grad():
            ref = model(torch.tensor([list(c.prompt_ids)])).logits[0]          # [T, V]
        n = int(tr.lengths[b])
        got = frozen_logits(model, tr.resid_out[b, :n, -1], tr.norm_scale[b, :n], tr.norm_mean[b, :n])
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(frozen_logits(model, tr.resid_out[:, :, -1], tr.norm_scale, tr.norm_mean)[
        torch.arange(len(cases)), tr.lengths - 1], tr.logits, atol=1e-4, rtol=1e-4)


def test_left_padded_batch_equals_one_by_one(tiny):
    _, model = tiny
    cases = random_cases(model, n=6, prompt_len=(2, 9))
    batched = trace(model, TOK, [c.prompt_ids for c in cases], positions="all")
    for b, c in enumerate(cases):
        one = trace(model, TOK, [c.prompt_ids], positions="all")
        n = len(c.prompt_ids)
        assert int(batched.lengths[b]) == n
        for k in tracing.KEEP_ALL:
            torch.testing.assert_close(getattr(batched, k)[b, :n], getattr(one, k)[0, :n], atol=2e-5, rtol=1e-4)
    acc_b = accuracy(model, TOK, cases, batch_size=6)
    acc_1 = accuracy(model, TOK, cases, batch_size=1)
    assert list(acc_b.first_correct) == list(acc_1.first_correct)
    torch.testing.assert_close(torch.tensor(acc_b.gold_logprob.values), torch.tensor(acc_1.gold_logprob.values),
                               atol=1e-4, rtol=1e-4)


def _n_hooks(model):
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def test_hooks_removed_after_exception(tiny):
    _, model = tiny
    before = _n_hooks(model)
    with pytest.raises(RuntimeError, match="boom"):
        with ablate_heads(model, [(0, 0), (1, 1)]):
            assert _n_hooks(model) == before + 2
            raise RuntimeError("boom")
    assert _n_hooks(model) == before
    cases = random_cases(model, n=2)
    head_sweep(model, TOK, cases, heads=[(1, 0)], run=Run(progress=False))
    trace(model, TOK, [c.prompt_ids for c in cases])
    assert _n_hooks(model) == before


def test_sweep_resumes_from_saved_layers(tmp_path):
    model = make_model("llama-gqa")
    cases = random_cases(model, n=5)
    heads = [(0, 0), (1, 1), (2, 3)]
    first = head_sweep_cases(model, TOK, cases, heads=heads, run=Run(tmp_path, progress=False))
    assert sorted(p.name for p in tmp_path.glob("layer_*.pt")) == ["layer_000.pt", "layer_001.pt", "layer_002.pt"]
    # Mark layer 1's saved result; a rerun must load it rather than recompute it.
    saved = torch.load(tmp_path / "layer_001.pt")
    saved["heads"][(1, 1)]["gold_logprob"][:] = -123.0
    torch.save(saved, tmp_path / "layer_001.pt")
    again = head_sweep_cases(model, TOK, cases, heads=heads, run=Run(tmp_path, progress=False))
    assert (again[again.layer == 1].gold_logprob == -123.0).all()
    same = again.layer != 1
    assert list(again[same].gold_logprob) == list(first[same].gold_logprob)
    # Different cases -> different fingerprint -> recomputed, not mixed up.
    other = head_sweep_cases(model, TOK, cases[:3], heads=heads, run=Run(tmp_path, progress=False))
    assert (other.gold_logprob != -123.0).all()


def test_sweep_caches_per_head_and_per_weights(tmp_path):
    """A rerun with more heads computes only the new ones; an edited model never reuses old results."""
    model = make_model("llama-gqa")
    cases = random_cases(model, n=4)
    one = head_sweep_cases(model, TOK, cases, heads=[(1, 0)], run=Run(tmp_path, progress=False))
    two = head_sweep_cases(model, TOK, cases, heads=[(1, 0), (1, 3)], run=Run(tmp_path, progress=False))
    assert list(two[two["head"] == 0].gold_logprob) == list(one.gold_logprob)
    assert set(torch.load(tmp_path / "layer_001.pt")["heads"]) == {(1, 0), (1, 3)}
    with torch.no_grad():
        final_norm(model).weight.mul_(1.5)
    edited = head_sweep_cases(model, TOK, cases, heads=[(1, 0)], run=Run(tmp_path, progress=False))
    with ablate_heads(model, [(1, 0)]):
        ref = accuracy(model, TOK, cases)
    torch.testing.assert_close(torch.tensor(edited.gold_logprob.values, dtype=torch.float64),
                               torch.tensor(ref.gold_logprob.values, dtype=torch.float64), atol=1e-4, rtol=1e-4)


def test_sweep_summary_matches_per_case_means():
    model = make_model("llama-mha")
    cases = random_cases(model, n=8, gold="random")
    heads = [(0, 0), (2, 1)]
    df = head_sweep(model, TOK, cases, heads=heads, run=Run(progress=False))
    long = head_sweep_cases(model, TOK, cases, heads=heads, run=Run(progress=False))
    assert set(df.op) == {"+", "-", "*", "/", "all"}
    for (l, h) in heads:
        rows = long[(long.layer == l) & (long["head"] == h)]
        for op in "+-*/":
            sel = rows[rows.op == op]
            got = df[(df.layer == l) & (df["head"] == h) & (df.op == op)].iloc[0]
            assert got.n == len(sel)
            assert got.accuracy == pytest.approx(sel.first_correct.mean())
            assert got.base_accuracy == pytest.approx(sel.base_first_correct.mean())
            assert got.gold_logprob == pytest.approx(sel.gold_logprob.mean())
        allrow = df[(df.layer == l) & (df["head"] == h) & (df.op == "all")].iloc[0]
        assert allrow.n == 8 and allrow.accuracy == pytest.approx(rows.first_correct.mean())


def test_mean_sweep_without_means_uses_head_means():
    model = make_model("gpt2")
    cases = random_cases(model, n=5)
    auto = head_sweep_cases(model, TOK, cases, heads=[(1, 2)], method="mean", run=Run(progress=False))
    given = head_sweep_cases(model, TOK, cases, heads=[(1, 2)], method="mean",
                                means=head_means(model, TOK, cases), run=Run(progress=False))
    assert list(auto.gold_logprob) == list(given.gold_logprob)


def test_hooks_are_removed_also_on_an_exception():
    """Every hook the library attaches goes through hooks.attached: none survives its block."""
    from cna_utils.model import hooks
    model = make_model("llama-gqa")
    mods = [m for m in model.modules()]
    count = lambda: sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in mods)
    before, store = count(), {}
    with pytest.raises(RuntimeError, match="inside"):
        with hooks.attached(hooks.capture_input({0: families.down_proj(model, 0)}, store) +
                            hooks.capture_output({1: families.mlp(model, 1)}, store)):
            assert count() == before + 2
            model(torch.tensor([[5, 6, 7]]))
            raise RuntimeError("inside")
    assert count() == before and store[0].shape[-1] == spec(model).d_mlp
    with pytest.raises(ZeroDivisionError):
        with ablate_heads(model, ["1_0"]), mask_neurons(model, ["0_1"]):
            1 / 0
    assert count() == before
    with pytest.raises(ValueError, match="hook kind"):
        with hooks.attached([hooks.Hook(mods[0], print, "sideways")]):
            pass
    assert count() == before


@pytest.mark.parametrize("fam", FAMILIES)
def test_attention_pattern_is_causal_and_leaves_the_model_as_it_was(fam):
    model = make_model(fam)
    case = random_cases(model, n=1, seed=3, prompt_len=(6, 6))[0]
    before_impl = model.config._attn_implementation
    ids = torch.tensor([list(case.prompt_ids)])
    before = model(ids).logits
    toks, w = attention_pattern(model, PadTokenizer(), case, 1)
    s = spec(model)
    assert w.shape == (s.n_heads, 6, 6) and len(toks) == 6
    torch.testing.assert_close(w.sum(-1), torch.ones(s.n_heads, 6))          # each row is a distribution
    assert float(w.triu(1).abs().max()) == 0.0                               # no position looks ahead
    torch.testing.assert_close(w[:, 0, 0], torch.ones(s.n_heads))
    assert model.config._attn_implementation == before_impl
    torch.testing.assert_close(model(ids).logits, before)
    with pytest.raises(IndexError, match="out of range"):
        attention_pattern(model, PadTokenizer(), case, s.n_layers)


def test_answer_logprobs_with_a_shared_prompt_cache_equal_one_padded_forward_per_case(tiny):
    """Chapter 7's bias scores: cases with one prompt share its key/value cache; each answer's
    log-probability equals the teacher-forced sum from a plain padded forward."""
    _, model = tiny
    base = random_cases(model, n=3, answer_len=(1, 4))
    cases = [dataclasses.replace(c, prompt=base[0].prompt, prompt_ids=base[0].prompt_ids) for c in base] + base[1:]
    got = answer_logprobs(model, cases, batch_size=2)            # batches of 2 answers per prompt
    batch = encode(TOK, cases)
    ref = score(answer_logits(model, batch), batch.targets)["token_logprob"].sum(-1)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert len({len(c.answer_ids) for c in cases}) > 1              # answers of different lengths
