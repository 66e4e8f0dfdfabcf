"""Attribution patching on tiny random models of every family: the estimate is the exact first-order
effect of the ablation, GradDrop's terms are the first-order effects with one block's input frozen,
and the table has head_sweep's shape."""
from dataclasses import replace

import pytest
import torch

from cna_utils.measure.attribution import attribution_patching, attribution_patching_cases, merge_exact
from cna_utils.measure.sweep import head_sweep, head_sweep_cases
from cna_utils.model.families import layers, o_proj, spec
from cna_utils.model.forward import answer_logits, encode, Run
from cna_utils.measure.interventions import head_mask_hook, head_means
from cna_utils.model.hooks import attached, post, pre, pre_kwargs

from conftest import PadTokenizer, make_model, random_cases

TOK = PadTokenizer()


def _first_token(cases):
    return [replace(c, answer_ids=c.answer_ids[:1], kinds=c.kinds[:1]) for c in cases]


def _scaled(model, batch, layer, head, s, means=None, extra=()):
    """(log p(answer), all logits) with head (layer, head) set to s * a + (1 - s) * mean (mean 0 for
    zero ablation)."""
    sp = spec(model)
    mask = torch.ones(1, sp.n_heads, dtype=torch.float64)
    mask[0, head] = s
    mu = means[layer] if means is not None else None
    with torch.no_grad(), attached([pre(o_proj(model, layer), head_mask_hook(sp.n_heads, sp.head_dim, mask, mu)), *extra]):
        z = answer_logits(model, batch)[:, 0].double()
    rows, gold = torch.arange(len(batch)), batch.targets[:, 0]
    return torch.log_softmax(z, -1)[rows, gold], z


def _rows(long, layer, head, column):
    sel = long[(long["layer"] == layer) & (long["head"] == head)].sort_values("case")
    return torch.tensor(sel[column].values, dtype=torch.float64)


@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_atp_is_the_first_order_effect_of_the_ablation(tiny, ablation):
    """Scaling the head's slice by s moves it along the line to its target; at s = 1 the slope of
    log p(answer) and of the margin (central differences) is the AtP estimate."""
    name, model = tiny
    model = model.double()
    cases = _first_token(random_cases(model, n=5, gold="random", seed=1))
    means = head_means(model, TOK, cases).double() if ablation == "mean" else None
    long = attribution_patching_cases(model, TOK, cases, ablation=ablation, means=means, run=Run(progress=False))
    batch = encode(TOK, cases)
    rows, gold = torch.arange(len(cases)), batch.targets[:, 0]
    z = answer_logits(model, batch)[:, 0].double().detach()
    other = z.clone()
    other[rows, gold] = float("-inf")
    runner = other.argmax(-1)                                   # fixed at the unablated model's

    def margin(logits):
        return logits[rows, gold] - logits[rows, runner]
    sp, eps = spec(model), 1e-2
    for layer in range(sp.n_layers):
        for head in range(sp.n_heads):
            lp_hi, gz_hi = _scaled(model, batch, layer, head, 1 + eps, means)
            lp_lo, gz_lo = _scaled(model, batch, layer, head, 1 - eps, means)
            d_lp = -(lp_hi - lp_lo) / (2 * eps)
            est = _rows(long, layer, head, "gold_logprob") - _rows(long, layer, head, "base_gold_logprob")
            assert torch.allclose(est, d_lp, atol=2e-5 + 1e-3 * float(d_lp.abs().max())), (name, layer, head)
            d_m = -(margin(gz_hi) - margin(gz_lo)) / (2 * eps)
            est_m = _rows(long, layer, head, "margin") - _rows(long, layer, head, "base_margin")
            assert torch.allclose(est_m, d_m, atol=2e-5 + 1e-3 * float(d_m.abs().max())), (name, layer, head)
            assert torch.allclose(_rows(long, layer, head, "base_margin"), margin(z), atol=1e-5)
            flips = _rows(long, layer, head, "margin") > 0
            assert flips.tolist() == long[(long["layer"] == layer) & (long["head"] == head)].sort_values(
                "case")["first_correct"].tolist()


def _linear_after_last_attention(model):
    """Hooks that make everything after the last layer's attention linear: that layer's FFN writes
    nothing, and the final norm is its affine part alone (x * weight + bias, no statistics)."""
    from cna_utils.model.families import final_norm, mlp
    last = spec(model).n_layers - 1

    def affine(module, args, output):
        out = args[0] * module.weight
        return out + module.bias if getattr(module, "bias", None) is not None else out
    return [post(mlp(model, last), lambda m, a, out: out * 0), post(final_norm(model), affine)]


@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_atp_is_the_exact_ablation_when_what_follows_the_head_is_linear(tiny, ablation):
    """On a model whose layers after the head are linear (a head of the last layer, that layer's FFN
    silenced, the final norm's statistics removed) the margin to the runner-up is linear in the
    head's slice: AtP's estimate of it is the exact effect of the whole ablation, not of a small one."""
    name, model = tiny
    model = model.double()
    cases = _first_token(random_cases(model, n=5, gold="random", seed=8))
    linear = _linear_after_last_attention(model)
    sp = spec(model)
    last = sp.n_layers - 1
    with attached(linear):
        means = head_means(model, TOK, cases).double() if ablation == "mean" else None
        long = attribution_patching_cases(model, TOK, cases, heads=[(last, h) for h in range(sp.n_heads)],
                                          ablation=ablation, means=means, run=Run(progress=False))
    batch = encode(TOK, cases)
    rows, gold = torch.arange(len(cases)), batch.targets[:, 0]
    _, z = _scaled(model, batch, last, 0, 1.0, means, extra=linear)
    other = z.clone()
    other[rows, gold] = float("-inf")
    runner = other.argmax(-1)
    for head in range(sp.n_heads):
        _, z_abl = _scaled(model, batch, last, head, 0.0, means, extra=linear)
        exact = z_abl[rows, gold] - z_abl[rows, runner]
        est = _rows(long, last, head, "margin")
        assert torch.allclose(est, exact, atol=1e-8 + 1e-8 * float(exact.abs().max())), (name, head)
        assert (est - _rows(long, last, head, "base_margin")).abs().max() > 1e-6     # the ablation does move it
    # the same heads in the real model: the estimate is first order only, and differs
    real = attribution_patching_cases(model, TOK, cases, heads=[(last, 0)], ablation=ablation, means=means, run=Run(progress=False))
    _, z_real = _scaled(model, batch, last, 0, 0.0, means)
    base_real = _scaled(model, batch, last, 0, 1.0, means)[1]
    other = base_real.clone()
    other[rows, gold] = float("-inf")
    runner_real = other.argmax(-1)
    assert not torch.allclose(_rows(real, last, 0, "margin"), z_real[rows, gold] - z_real[rows, runner_real],
                              atol=1e-6)


def _clean_input(model, k, clean):
    """Hooks that make block k read the unablated residual ``clean`` while its skip keeps the real one."""
    saved = {}

    def before(module, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        saved["h"] = h
        return ((clean,) + tuple(args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": clean})

    def after(module, args, output):
        shift = saved.pop("h") - clean
        return (output[0] + shift,) + tuple(output[1:]) if isinstance(output, tuple) else output + shift

    return [pre_kwargs(layers(model)[k], before), post(layers(model)[k], after)]


@pytest.mark.parametrize("name", ["llama-gqa", "gpt2", "neox-parallel"])
def test_graddrop_terms_are_effects_with_one_block_frozen(name):
    """AtP with block k's gradient stopped is the first-order effect of the ablation when block k
    reads the unablated residual (its skip connection the ablated one); graddrop is the mean over
    all layers of the absolute values of these terms (|AtP| for blocks at or below the head)."""
    model = make_model(name).double()
    cases = _first_token(random_cases(model, n=4, gold="random", seed=2))
    long = attribution_patching_cases(model, TOK, cases, method="atp*", run=Run(progress=False))
    batch = encode(TOK, cases)
    L, eps = spec(model).n_layers, 1e-2
    inputs = {}
    from cna_utils.model.hooks import capture_input
    with torch.no_grad(), attached(capture_input({k: layers(model)[k] for k in range(L)}, inputs)):
        answer_logits(model, batch)
    for head in range(spec(model).n_heads):
        atp = _rows(long, 0, head, "gold_logprob") - _rows(long, 0, head, "base_gold_logprob")
        terms = [atp.abs()]                                    # block 0: the head's own layer
        for k in range(1, L):
            hi, _ = _scaled(model, batch, 0, head, 1 + eps, extra=_clean_input(model, k, inputs[k]))
            lo, _ = _scaled(model, batch, 0, head, 1 - eps, extra=_clean_input(model, k, inputs[k]))
            terms.append((-(hi - lo) / (2 * eps)).abs())
        expect = torch.stack(terms).mean(0)
        got = _rows(long, 0, head, "graddrop")
        assert torch.allclose(got, expect, atol=2e-5 + 1e-3 * float(expect.max())), (name, head)
    top = long[long["layer"] == L - 1]                            # nothing above the last layer: |AtP|
    assert torch.allclose(torch.tensor(top["graddrop"].values, dtype=torch.float64),
                          torch.tensor((top["gold_logprob"] - top["base_gold_logprob"]).abs().values,
                                       dtype=torch.float64), atol=1e-6)


def _cancelling_path(model, u0, w, v, beta, K):
    """A hook inside block 1 (on its FFN, so stopping the block's gradient stops it too) that adds
    v * beta * K * tanh((u - u0) / K) at the last position, u = the FFN input there . w: nothing at
    the unablated model (u = u0), slope beta along u, and never more than |beta| K however far the
    ablation moves u (it saturates)."""
    from cna_utils.model.families import mlp

    def fn(module, args, out):
        reps = out.shape[0] // len(u0)                      # atp* runs the batch once per stopped block
        u = args[0][:, -1] @ w
        add = (beta.repeat(reps) * K * torch.tanh((u - u0.repeat(reps)) / K))[:, None] * v
        out = out.clone()
        out[:, -1] = out[:, -1] + add
        return out
    return post(mlp(model, 1), fn)


def test_graddrop_sees_a_head_whose_paths_cancel_to_first_order():
    """A case built for plain AtP to miss: a path through block 1 whose slope cancels the head's
    first-order effect exactly, but which saturates, so the real ablation still moves log p. AtP
    reads 0; AtP*'s GradDrop (block 1's gradient stopped) sees the effect, and its error against the
    exact ablation is smaller than AtP's."""
    from cna_utils.model.families import mlp
    from cna_utils.model.hooks import capture_input
    model = make_model("qwen2").double()
    cases = _first_token(random_cases(model, n=4, gold="random", seed=9, prompt_len=(6, 6)))   # one length: batch order = case order
    batch = encode(TOK, cases)
    d = spec(model).d_model
    g = torch.Generator().manual_seed(0)
    w, v = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    store = {}
    with torch.no_grad(), attached(capture_input({"x": mlp(model, 1)}, store)):
        answer_logits(model, batch)
    u0 = store["x"][:, -1] @ w
    head, K = (0, 1), 1e-4

    def atp(beta, method="atp"):
        with attached([_cancelling_path(model, u0, w, v, beta, K)]):
            long = attribution_patching_cases(model, TOK, cases, heads=[head], method=method, run=Run(progress=False))
        return long, _rows(long, *head, "gold_logprob") - _rows(long, *head, "base_gold_logprob")
    _, a0 = atp(torch.zeros(len(cases), dtype=torch.float64))
    _, a1 = atp(torch.ones(len(cases), dtype=torch.float64))
    beta = -a0 / (a1 - a0)                                  # the estimate is affine in beta: cancel it
    long, est = atp(beta, "atp*")
    assert est.abs().max() < 1e-9                           # plain AtP: "this head does nothing"
    base, _ = _scaled(model, batch, *head, 1.0, extra=[_cancelling_path(model, u0, w, v, beta, K)])
    ablated, _ = _scaled(model, batch, *head, 0.0, extra=[_cancelling_path(model, u0, w, v, beta, K)])
    exact = (ablated - base).abs()
    assert exact.min() > 1e-3                               # ... but zeroing it does move log p
    graddrop = _rows(long, *head, "graddrop")
    assert ((graddrop - exact).abs() < exact).all(), (graddrop, exact)   # AtP's error is |exact|


def test_estimate_has_head_sweeps_table_and_exact_baseline():
    model = make_model("llama-gqa")
    cases = random_cases(model, n=8, seed=3)
    est = attribution_patching(model, TOK, cases, by="op", run=Run(progress=False))
    exact = head_sweep(model, TOK, cases, by="op", run=Run(progress=False))
    keys = ["layer", "head", "op"]
    assert est[keys].values.tolist() == exact[keys].values.tolist()
    for col in ("n", "base_accuracy", "base_gold_logprob"):
        assert torch.allclose(torch.tensor(est[col].values, dtype=torch.float64),
                              torch.tensor(exact[col].values, dtype=torch.float64), atol=1e-5), col
    assert {"accuracy", "drop", "gold_logprob", "dla"} <= set(est.columns)


def test_estimate_does_not_depend_on_batching():
    model = make_model("qwen2")
    cases = random_cases(model, n=9, seed=4, gold="random")
    a = attribution_patching_cases(model, TOK, cases, method="atp*", run=Run(batch_size=9, rows_per_forward=64, progress=False))
    b = attribution_patching_cases(model, TOK, cases, method="atp*", run=Run(batch_size=2, rows_per_forward=2, progress=False))
    for col in ("gold_logprob", "margin", "graddrop", "dla"):
        assert torch.allclose(torch.tensor(a[col].values), torch.tensor(b[col].values), atol=1e-5), col


@pytest.mark.parametrize("name", ["llama-mha", "gpt2"])
def test_direct_logit_attribution_is_the_heads_write_through_the_frozen_norm(name):
    """A head's dla is the answer's logit of its own o_proj write at the last position, through the
    final norm with its statistics frozen at the real residual (LayerNorm: the write's own mean removed)."""
    from cna_utils.model.families import family, final_norm, weight_out_in
    from cna_utils.model.hooks import capture_input
    from cna_utils.measure.tracing import frozen_logits, norm_stats
    model = make_model(name)
    cases = _first_token(random_cases(model, n=3, seed=5))
    long = attribution_patching_cases(model, TOK, cases, run=Run(progress=False))
    batch = encode(TOK, cases)
    sp = spec(model)
    store, final = {}, {}
    with torch.no_grad(), attached(capture_input({l: o_proj(model, l) for l in range(sp.n_layers)}, store)
                                   + capture_input({"x": final_norm(model)}, final)):
        answer_logits(model, batch)
    scale, _ = norm_stats(model, final["x"][:, -1])
    w = weight_out_in(o_proj(model, 1))                                           # [d, H*dh]
    rows = torch.arange(len(cases))
    for head in range(sp.n_heads):
        sl = slice(head * sp.head_dim, (head + 1) * sp.head_dim)
        c = store[1][:, -1, sl] @ w[:, sl].T                                        # the head's write, [B, d]
        mean = c.mean(-1) if family(model).norm == "layer" else None
        zero = frozen_logits(model, torch.zeros_like(c), scale, None)              # the norm's bias alone
        want = (frozen_logits(model, c, scale, mean) - zero)[rows, batch.targets[:, 0]]
        assert torch.allclose(_rows(long, 1, head, "dla").float(), want, atol=1e-5), head


def test_bad_method_says_what_to_use():
    model = make_model("qwen2")
    with pytest.raises(ValueError, match="atp"):
        attribution_patching_cases(model, TOK, random_cases(model, n=2), method="exact", run=Run(progress=False))


def test_estimate_resumes_from_saved_batches(tmp_path):
    model = make_model("llama-gqa")
    cases = random_cases(model, n=6, seed=6, gold="random")
    full = attribution_patching_cases(model, TOK, cases, run=Run(tmp_path, batch_size=2, progress=False))
    (path,) = tmp_path.glob("atp-*.pt")
    saved = torch.load(path)
    first = saved["done"][0]
    saved["done"] = [first]                                  # as if interrupted after one batch
    for t in list(saved["out"].values()) + list(saved["base"].values()):
        t.mul_(0)
    torch.save(saved, path)
    again = attribution_patching_cases(model, TOK, cases, run=Run(tmp_path, batch_size=2, progress=False))
    # the batch on record is read back (zeros now), every other one recomputed
    changed = (again["gold_logprob"] - full["gold_logprob"]).abs() > 1e-6
    assert changed.any() and not changed.all()
    assert sorted(torch.load(path)["done"]) == [0, 1, 2]


def test_merge_exact_keeps_every_head_and_takes_the_exact_rows():
    model = make_model("qwen2")
    cases = random_cases(model, n=5, seed=7)
    est = attribution_patching_cases(model, TOK, cases, run=Run(progress=False))
    exact = head_sweep_cases(model, TOK, cases, heads=["1_2", "0_0"], run=Run(progress=False))
    merged = merge_exact(est, exact)
    assert len(merged) == len(est) and merged["exact"].sum() == 2 * len(cases)
    got = merged[merged["exact"]].sort_values(["layer", "head", "case"])["gold_logprob"].to_numpy()
    want = exact.sort_values(["layer", "head", "case"])["gold_logprob"].to_numpy()
    assert (got == want).all()
