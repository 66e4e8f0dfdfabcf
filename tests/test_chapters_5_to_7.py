"""Single-layer LoRA, real pruning and the gender-bias metric (chapters 5-7), on every tiny family
and on the real model."""
import copy
import dataclasses
import json

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from cna_utils.measure.evaluate import accuracy
from cna_utils.measure.importance import importance_scores
from cna_utils.measure.interventions import mask_neurons
from cna_utils.measure.tracing import last_logits, trace
from cna_utils.model import families, loading
from cna_utils.model.families import attention, spec
from cna_utils.model.loading import load_model
from cna_utils.paper import bias as gb, depth
from cna_utils.measure import lora, prune
from conftest import FAMILIES, VOCAB, PadTokenizer, make_model, random_cases

TOK = PadTokenizer()


def _four(c):
    """A LoRA comparison's scores and traces, LoRA first."""
    assert c.labels == ("lora", "ori")
    return c.imp_lora, c.imp_ori, c.traces[0], c.traces[1]


def _train(model, layer, out, steps_cases=8, lr=1e-2, seed=0, epochs=1):
    cases = random_cases(model, n=steps_cases, seed=1, gold="random")
    hp = lora.LoraHParams(epochs=epochs, batch_size=4, seed=seed, progress=False)
    return lora.train_lora(model, TOK, layer, (cases, cases[:3], cases[:3]), lr=lr, hp=hp, out_dir=out)


@pytest.mark.parametrize("name", FAMILIES)
def test_lora_adapts_only_its_layers_attention(name, tmp_path):
    from peft import get_peft_model
    model = make_model(name)
    n = spec(model).n_layers
    layer = n - 1
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prefix = next(k for k, m in model.named_modules() if m is attention(model, layer)) + "."
    # what peft makes trainable: LoRA matrices inside layer `layer`'s attention block, nothing else
    pm = get_peft_model(model, lora.lora_config(model, layer))
    trainable = [k for k, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(k.replace("base_model.model.", "").startswith(prefix) and "lora_" in k for k in trainable)
    pm.unload()
    for p in model.parameters():
        p.requires_grad_(True)
    run = _train(model, layer, tmp_path / "run")
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)  # base untouched
    cases = random_cases(model, n=4, seed=3)
    tr0 = trace(model, TOK, cases, keep=("resid_in", "attn_out"))
    with lora.lora_applied(model, run):
        tr1 = trace(model, TOK, cases, keep=("resid_in", "attn_out"))
    assert torch.equal(tr0.resid_in[:, :layer + 1], tr1.resid_in[:, :layer + 1])   # nothing below layer l moves
    assert not torch.allclose(tr0.attn_out[:, layer], tr1.attn_out[:, layer], atol=1e-6)
    tr2 = trace(model, TOK, cases, keep=("attn_out",))                               # restored on exit
    assert torch.equal(tr0.attn_out, tr2.attn_out)


def test_lora_training_is_deterministic_and_resumes(tmp_path):
    model = make_model("llama-gqa")
    a = _train(model, 1, tmp_path / "a")
    b = _train(model, 1, tmp_path / "b")
    c = _train(model, 1, tmp_path / "c", seed=1)
    wa, wb, wc = (load_file(str(tmp_path / x / "adapter" / "adapter_model.safetensors")) for x in "abc")
    assert a["losses"] == b["losses"] and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)                     # the seed matters
    # a finished run is loaded, not retrained: same result, adapter file untouched
    stamp = (tmp_path / "a" / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns
    again = _train(model, 1, tmp_path / "a", lr=0.5)                          # arguments ignored once finished
    assert again == json.loads((tmp_path / "a" / "result.json").read_text()) == json.loads(json.dumps(a))
    assert (tmp_path / "a" / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == stamp


def test_lora_per_layer_skips_finished_layers(tmp_path):
    model = make_model("llama-mha")
    cases = random_cases(model, n=6, seed=2, gold="random")
    kw = dict(lrs=[1e-2], hp=lora.LoraHParams(epochs=1, batch_size=4, seed=0, progress=False), cache_dir=tmp_path)
    first = lora.lora_per_layer(model, TOK, [0], (cases, cases[:2], cases[:2]), **kw)
    done = {p: p.stat().st_mtime_ns for p in tmp_path.glob("lora/*/result.json")}
    both = lora.lora_per_layer(model, TOK, [0, 2], (cases, cases[:2], cases[:2]), **kw)
    assert len(done) == 1 and all(p.stat().st_mtime_ns == t for p, t in done.items())
    assert len(list(tmp_path.glob("lora/*/result.json"))) == 2
    assert both[both.layer == 0].losses.iloc[0] == first.losses.iloc[0]
    assert list(both.layer) == [0, 2] and both.chosen.all()


def test_learning_rate_chosen_on_held_out_data(tmp_path):
    model = make_model("qwen2")
    cases = random_cases(model, n=8, seed=4, gold="random")
    runs = lora.lora_per_layer(model, TOK, [0, 1], (cases, cases[:4], cases[:4]), lrs=[1e-1, 1e-4], select_on=0,
                               hp=lora.LoraHParams(epochs=1, batch_size=4, progress=False), cache_dir=tmp_path)
    trial = runs[runs.layer == 0]
    best = trial.loc[trial.val_acc.idxmax()]
    assert len(trial) == 2 and trial.chosen.sum() == 1
    assert float(runs[runs.layer == 1].lr.iloc[0]) == float(runs[runs.chosen & (runs.layer == 0)].lr.iloc[0])
    assert runs[runs.chosen & (runs.layer == 0)].val_acc.iloc[0] == best.val_acc


def test_lora_bad_input(tmp_path):
    model = make_model("llama-mha")
    with pytest.raises(IndexError, match="out of range"):
        lora.lora_config(model, 3)
    with pytest.raises(IndexError, match="out of range"):
        lora.lora_per_layer(model, TOK, [-1], (random_cases(model, 2), [], []), cache_dir=tmp_path)
    with pytest.raises(ValueError, match="training set is empty"):
        lora.train_lora(model, TOK, 0, ([], None, None), out_dir=tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="no LoRA adapter"):
        with lora.lora_applied(model, tmp_path / "nothing"):
            pass


@pytest.mark.parametrize("name", FAMILIES)
def test_pruning_equals_zeroing(name):
    model = make_model(name)
    s = spec(model)
    g = torch.Generator().manual_seed(0)
    keep = {l: sorted(torch.randperm(s.d_mlp, generator=g)[:s.d_mlp // 3].tolist()) for l in range(1, s.n_layers)}
    keep[s.n_layers - 1] = []                                    # a layer may lose every neuron
    cases = random_cases(model, n=5, seed=5)
    dropped = [(l, k) for l, ks in keep.items() for k in range(s.d_mlp) if k not in ks]
    with mask_neurons(model, dropped):
        zeroed = last_logits(model, TOK, cases)
    small = prune.prune_ffn(copy.deepcopy(model), keep)
    pruned = last_logits(small, TOK, cases)
    torch.testing.assert_close(pruned, zeroed, atol=2e-5, rtol=1e-5)
    # each removed neuron takes its key rows (up, and gate if gated), their biases and its value column
    up = families.in_layer(model, 1, "up")
    per_neuron = (3 if s.family == "llama" else 2) * s.d_model + (1 if getattr(up, "bias", None) is not None else 0)
    removed = len(dropped) * per_neuron
    assert prune.ffn_parameters(model, list(keep)) - prune.ffn_parameters(small, list(keep)) == removed
    assert sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in small.parameters()) == removed


def test_pruning_helpers():
    score = torch.zeros(2, 2, 5)
    score[0, 0, 3], score[0, 1, 1], score[1, 1, 1], score[1, 1, 4] = 5, 4, 3, 2
    keep = prune.union_top_neurons(score, 2, layers=[7, 9])
    assert keep == {7: [3], 9: [1, 4]} and prune.kept_count(keep) == 3
    assert prune.union_top_neurons(score, 2, layers=[7, 9], within=[9]) == {9: [1, 4]}   # ranked over both layers
    assert prune.union_top_neurons(score, 1, layers=[7, 9], within=[9]) == {9: [1]}      # case 0's top-1 is in layer 7
    with pytest.raises(ValueError, match="not among the scored layers"):
        prune.union_top_neurons(score, 2, layers=[7, 9], within=[8])
    rnd = prune.random_keep(keep, 5, seed=0)
    assert {l: len(v) for l, v in rnd.items()} == {7: 1, 9: 2}
    model = make_model("llama-mha")
    with pytest.raises(IndexError, match="out of range"):
        prune.prune_ffn(model, {0: [999]})


@pytest.fixture(scope="module")
def real():
    return load_model()


def test_lora_template_is_the_one_the_original_model_answers_best_on_training_sentences(real, tmp_path):
    model, tok = real
    sizes = lora.Splits(ops="+-", n_train=16, n_val=4, n_test=4)
    chosen, table = lora.template_choice(model, tok, sizes, cache_dir=tmp_path)
    usable = table[table.n > 0]
    assert set(table.template) == {1, 2, 3, 4, 5} and len(usable) >= 4
    top = usable.answer.max()
    assert chosen == int(usable[usable.answer == top].template.min())        # ties go to the lower number
    for t in usable.template:                                                  # the same questions each time
        train, _, test = lora.lora_splits(tok, sizes, templates=[int(t)])
        first = lora.lora_splits(tok, sizes, templates=[int(usable.template.iloc[0])])
        assert [(c.a, c.b, c.op) for c in train] == [(c.a, c.b, c.op) for c in first[0]]
        acc = accuracy(model, tok, train).answer_correct.mean()
        assert abs(float(usable[usable.template == t].answer.iloc[0]) - float(acc)) < 1e-9
    assert len(list(tmp_path.glob("lora-templates-*.json"))) == 1
    again = lora.template_choice(model, tok, sizes, cache_dir=tmp_path)
    assert again[0] == chosen and again[1].answer.fillna(-1).tolist() == table.answer.fillna(-1).tolist()
    _, part = lora.template_choice(model, tok, sizes, n_choose=6)
    assert set(part[part.n > 0].n) == {6}                                      # 3 sentences per operation


def test_bias_metric_is_antisymmetric_and_uses_whole_professions(real):
    model, tok = real
    data = gb.load_bias_data()
    prompts = data["prompts"][:3]
    profs = {"woman": ["nurse", "dental assistant"], "man": ["miner", "machine operator"]}
    swapped = {"woman": profs["man"], "man": profs["woman"]}
    a = gb.bias_scores(model, tok, prompts, profs).set_index(["template", "profession"]).sort_index()
    b = gb.bias_scores(model, tok, prompts, swapped).set_index(["template", "profession"]).sort_index()
    torch.testing.assert_close(torch.tensor(a.bias.values), -torch.tensor(b.bias.values))
    s_a, s_b = gb.bias_summary(a.reset_index()), gb.bias_summary(b.reset_index())
    assert s_a["total"] == pytest.approx(-s_b["total"], abs=1e-6)
    # a two-token profession is scored by both of its tokens
    p = gb.fill(prompts[0], "woman")
    ids = tok(p)["input_ids"]
    full = tok(p + " dental assistant")["input_ids"]
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([full])).logits[0].float(), -1)
    want = sum(float(lp[i - 1, full[i]]) for i in range(len(ids), len(full)))
    got = float(gb.continuation_logprob(model, tok, [p], ["dental assistant"]).iloc[0, 0])
    assert len(full) - len(ids) >= 2 and got == pytest.approx(want, abs=1e-4)


def test_gender_cna_scores_and_bad_input(real):
    model, tok = real
    t = "A <gend> works as a"
    g = gb.gender_cna(model, tok, t, {"woman": ["nurse"], "man": ["miner"]})
    torch.testing.assert_close(g.score[0], g.imp["woman"][0] - g.imp["man"][0])
    torch.testing.assert_close(g.score[1], g.imp["man"][1] - g.imp["woman"][1])
    top = g.top(3)
    assert len(top) == 3 and top.mean_cna.is_monotonic_decreasing
    with pytest.raises(ValueError, match="more than one token"):
        gb.gender_cna(model, tok, t, {"woman": ["dental assistant"], "man": []})
    with pytest.raises(ValueError, match="empty"):
        gb.bias_scores(model, tok, [t], {"woman": [""], "man": ["miner"]})
    with pytest.raises(ValueError, match="no <gend> slot"):
        gb.bias_scores(model, tok, ["A person works as a"], {"woman": ["nurse"], "man": ["miner"]})
    assert gb.perplexity(model, tok, gb.load_bias_data()["neutral_text"][:2]) > 1


def test_lora_coefficients_identities(tmp_path):
    from cna_utils.paper.lora import lora_cna, lora_coefficients
    from cna_utils.paper.study import cna_cases
    model = make_model("llama-mha")
    cases = random_cases(model, n=4, seed=6)
    res = cna_cases(model, TOK, cases, "1_0")
    still = _train(model, 1, tmp_path / "zero", lr=0.0)             # B stays 0: the LoRA model IS the original
    coefs, inc = lora_coefficients(model, TOK, cases, res, {1: still}, ks=(6, 3))
    torch.testing.assert_close(coefs[1], coefs[0])
    assert (inc.increase.abs() < 1e-6).all()
    imp_lora, imp_ori, _, _ = _four(lora_cna(model, TOK, cases, still))
    torch.testing.assert_close(imp_lora, imp_ori)                   # CNA of a model with itself is 0
    moved = _train(model, 1, tmp_path / "moved", lr=1e-1)
    imp_lora, imp_ori, _, _ = _four(lora_cna(model, TOK, cases, moved, layers=[0, 1, 2]))
    own_lora, own_ori, _, _ = _four(lora_cna(model, TOK, cases, moved, layers=[0, 1, 2], scale="own"))
    torch.testing.assert_close(imp_ori, own_ori)                    # the original is scored at its own scale either way
    assert torch.equal(imp_lora[:, 0], imp_ori[:, 0])               # below the LoRA layer, at the original's scale: equal
    assert not torch.allclose(own_lora[:, 0], own_ori[:, 0])        # at the LoRA model's own scale: not
    _, _, tr_l, tr_o = _four(lora_cna(model, TOK, cases, moved, layers=[0, 1, 2]))
    preds = tr_o.logits.argmax(-1)                                  # the default target: the original's top-1
    ref_o, ref_l = importance_scores(model, [tr_o, tr_l], preds, shared_norm=True)
    assert torch.equal(imp_ori, ref_o) and torch.equal(imp_lora, ref_l)
    wrong = [dataclasses.replace(c, answer_ids=((c.answer_ids[0] + 1) % VOCAB,)) for c in cases]   # answers it does not give
    assert any(int(p) != c.answer_ids[0] for p, c in zip(preds, wrong))
    gold_lora, gold_ori, _, _ = _four(lora_cna(model, TOK, wrong, moved, layers=[0, 1, 2], target="gold"))
    ref_o, ref_l = importance_scores(model, [tr_o, tr_l], [c.answer_ids[0] for c in wrong], shared_norm=True)
    assert torch.equal(gold_ori, ref_o) and torch.equal(gold_lora, ref_l)
    pred_lora, _, _, _ = _four(lora_cna(model, TOK, wrong, moved, layers=[0, 1, 2]))
    assert torch.equal(pred_lora, imp_lora)                         # the prediction does not depend on the gold answer
    with pytest.raises(ValueError, match="target must be"):
        lora_cna(model, TOK, cases, moved, target="answer")
    coefs, _ = lora_coefficients(model, TOK, cases, res, {1: moved}, ks=(6,))
    for i in range(len(cases)):
        layer = torch.tensor(res.top(6, case=i).layer.values)
        assert torch.equal(coefs[1, i][layer < 1], coefs[0, i][layer < 1])    # below the LoRA layer: untouched
        assert not torch.allclose(coefs[1, i][layer >= 1], coefs[0, i][layer >= 1])


def test_a_pruned_model_does_not_reuse_the_original_models_lora_run(tmp_path):
    """train_cached keys a run by the weights it starts from: the same name, data and settings on a
    pruned copy train a new adapter; the original's run is loaded, not trained, the second time."""
    model = make_model("llama-mha")
    cases = random_cases(model, n=8, seed=1, gold="random")
    kw = dict(hp=lora.LoraHParams(epochs=1, batch_size=4, progress=False))
    data = (cases, cases[:3], cases[:3])
    first = lora.train_cached(model, TOK, 1, data, 1e-2, tmp_path, **kw)
    small = prune.prune_ffn(copy.deepcopy(model), {1: [0, 1, 2]})
    assert loading.model_label(small) == loading.model_label(model)
    pruned = lora.train_cached(small, TOK, 1, data, 1e-2, tmp_path, tag="p", **kw)
    assert pruned["adapter"] != first["adapter"] and "/p-L01-" in pruned["adapter"]
    assert lora.run_key(small, [cases]) != lora.run_key(model, [cases])
    again = lora.train_cached(model, TOK, 1, data, 1e-2, tmp_path, **kw)
    assert again == first                                               # loaded from result.json


def test_table_13_edits_are_their_definition(real):
    model, tok = real
    data = gb.load_bias_data()
    s = spec(model)
    top = pd.DataFrame({"layer": [20, 25], "neuron": [7, 300]})
    sets = gb.edit_sets(top, [1, 2], s.n_layers, s.d_mlp, random_draws=2, seed=3)
    assert list(sets) == ["original", "top-1", "random-1 #1", "random-1 #2", "top-2", "random-2 #1", "random-2 #2"]
    assert sets["top-2"] == [(20, 7), (25, 300)] and all(len(sets[f"random-2 #{d}"]) == 2 for d in (1, 2))
    assert sets == gb.edit_sets(top, [1, 2], s.n_layers, s.d_mlp, random_draws=2, seed=3)     # seeded
    profs = {"woman": ["nurse"], "man": ["miner"]}
    prompt_sets = {"first": data["prompts"][:2], "held-out": data["held_out_prompts"][:1]}
    t = gb.edit_table(model, tok, {k: sets[k] for k in ("original", "top-2", "random-2 #1", "random-2 #2")},
                      prompt_sets, profs, profs)
    with mask_neurons(model, sets["top-2"]):
        want = gb.bias_summary(gb.bias_scores(model, tok, prompt_sets["held-out"], profs))
    assert t.loc["top-2", ("held-out", "total")] == pytest.approx(want["total"], abs=1e-4)   # batching: float noise
    mean = t.loc["random-2 (mean of 2)", ("first", "man")]
    per = []
    for d in (1, 2):
        with mask_neurons(model, sets[f"random-2 #{d}"]):
            per.append(gb.bias_summary(gb.bias_scores(model, tok, prompt_sets["first"], profs))["man"])
    assert mean == pytest.approx(sum(per) / 2, abs=1e-4)
    assert list(t.index) == ["original", "top-2", "random-2 (mean of 2)"]


def test_chapter6_reads_chapter5s_layer_through_its_loader(tmp_path):
    from cna_utils.paper.lora import chapter5_layer
    layer, lr, why = chapter5_layer(tmp_path, 24, default_lr=0.001)
    assert (layer, lr) == (depth.scale_layer(9, 24), 0.001) and "not been run" in why
    (tmp_path / "05_lora.json").write_text(json.dumps({"best_shallow_layer": 15, "figure_2": {"15": {"lr": 0.0005}}}))
    assert chapter5_layer(tmp_path, 24, default_lr=0.001)[:2] == (15, 0.0005)
    layer, lr, why = chapter5_layer(tmp_path, 24, default_lr=0.001, given=3)
    assert (layer, lr) == (3, 0.001) and "given" in why


def test_best_shallow_lora_layer_breaks_ties_toward_the_papers_ninth_layer():
    from cna_utils.paper.lora import best_shallow_layer
    # 24 layers: the paper's 9th of 32 scales to 7, its shallow FFN layers 0-15 to 0-11
    assert best_shallow_layer({0: 1.0, 7: 1.0, 11: 0.9, 23: 1.0}, 24)[0] == 7
    assert best_shallow_layer({0: 1.0, 3: 0.9, 11: 1.0}, 24)[0] == 11     # |11 - 7| = 4 < |0 - 7| = 7
    assert best_shallow_layer({0: 0.5, 3: 0.9, 23: 1.0}, 24)[0] == 3       # the deep layer is not a candidate
    layer, why = best_shallow_layer({0: 1.0, 7: 1.0}, 24)
    assert "tied by layers 0, 7" in why and "nearest the paper's 9th layer (scaled: 7)" in why
    assert best_shallow_layer({20: 0.4, 23: 0.6}, 24)[0] == 23              # no shallow layer trained: all of them
    with pytest.raises(ValueError, match="no LoRA runs"):
        best_shallow_layer({}, 24)
