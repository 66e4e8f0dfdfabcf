"""The library's layout as a contract: one import path per name, no private names across modules,
short functions with few parameters, and the four changes a newcomer makes each in one room."""
import ast
import dataclasses
import json
from pathlib import Path

import pytest
import torch

import cna_utils as cu
from cna_utils.measure import lora
from cna_utils.measure.attribution import attribution_patching_cases
from cna_utils.model.forward import Run
from cna_utils.measure.compare import compare, Comparison, Scoring
from cna_utils.measure.interventions import (ablate_heads, Ablation, ablation, ABLATIONS, head_means,
                                             register_ablation)
from cna_utils.measure.names import Head, head_name, Neuron, parse_heads, parse_neurons
from cna_utils.measure.sweep import head_sweep_cases
from cna_utils.measure.tracing import last_logits, trace
from cna_utils.model.families import centred, check_layer, norm_stats
from cna_utils.store.results import differences, save_results

from conftest import PadTokenizer, make_model, random_cases

PKG = Path(cu.__file__).parent
MODULES = sorted(p for p in PKG.rglob("*.py") if p.name != "__init__.py")
ROOMS = ("model", "data", "measure", "paper", "store", "publish")
TOK = PadTokenizer()


def _tree(p):
    return ast.parse(p.read_text())


def _module_name(p: Path) -> str:
    return ".".join(p.relative_to(PKG.parent).with_suffix("").parts)


def test_every_module_lives_in_a_room():
    assert {p.relative_to(PKG).parts[0] for p in MODULES} == set(ROOMS)
    assert not list(PKG.glob("*.py"))[1:] and [p.name for p in PKG.glob("*.py")] == ["__init__.py"]


def test_packages_export_no_names():
    """A room's ``__init__`` (and the top package's) imports nothing: a name is reached only through
    the module that defines it."""
    for init in [PKG / "__init__.py"] + [PKG / r / "__init__.py" for r in ROOMS]:
        imports = [n for n in ast.walk(_tree(init)) if isinstance(n, (ast.Import, ast.ImportFrom))]
        assert all(isinstance(n, ast.Import) and n.names[0].name == "warnings" for n in imports), init


def test_all_lists_only_names_defined_in_the_module():
    for p in MODULES:
        tree = _tree(p)
        defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        defined |= {t.id for n in tree.body if isinstance(n, (ast.Assign, ast.AnnAssign))
                    for t in (n.targets if isinstance(n, ast.Assign) else [n.target]) if isinstance(t, ast.Name)}
        for n in tree.body:
            if isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in n.targets):
                names = [e.value for e in n.value.elts]
                assert set(names) <= defined, f"{p.relative_to(PKG)} re-exports {set(names) - defined}"


def test_no_relative_imports_and_no_private_names_across_modules():
    for p in MODULES:
        for n in ast.walk(_tree(p)):
            if isinstance(n, ast.ImportFrom):
                assert n.level == 0, f"{p.relative_to(PKG)}:{n.lineno} relative import"
                if n.module and n.module.startswith("cna_utils"):
                    private = [a.name for a in n.names if a.name.startswith("_")]
                    assert not private, f"{p.relative_to(PKG)}:{n.lineno} imports {private} from {n.module}"


def _params(fn) -> int:
    a = fn.args
    names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
    return len([x for x in names if x not in ("self", "cls")])


def test_functions_are_short_and_take_few_parameters():
    long, wide = [], set()
    for p in MODULES:
        for n in ast.walk(_tree(p)):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                where = f"{p.relative_to(PKG)}:{n.name}"
                if n.end_lineno - n.lineno + 1 > 60:
                    long.append(where)
                if _params(n) > 8:
                    wide.add(where)
    assert long == []
    # a function that needs more takes its options as one dataclass (Run, Solver, Screen, LoraHParams, ...)
    assert wide == set(), f"more than 8 parameters: {sorted(wide)}"


# --- names ---------------------------------------------------------------------------------------

def test_heads_and_neurons_are_parsed_once_into_named_tuples():
    model = make_model("llama-gqa")
    heads = parse_heads(model, ["1_2", (0, 3)])
    assert heads == [(1, 2), (0, 3)] and isinstance(heads[0], Head) and heads[0].name == "1_2"
    assert parse_heads(model, "1_2") == [Head(1, 2)] and head_name(*heads[1]) == "0_3"
    neurons = parse_neurons(model, ["2_5"])
    assert isinstance(neurons[0], Neuron) and neurons[0].index == 5 and neurons[0].name == "2_5"
    assert json.dumps(heads) == "[[1, 2], [0, 3]]"                    # a tuple on disk, as before
    with pytest.raises(ValueError, match="layer_head"):
        parse_heads(model, ["1-2"])


# --- families: the one place that knows the norms -----------------------------------------------------

@pytest.mark.parametrize("fam", ["llama-gqa", "gpt2"])
def test_norm_maths_matches_the_models_own_norm(fam):
    model = make_model(fam)
    from cna_utils.model.families import final_norm
    x = torch.randn(3, model.config.hidden_size)
    scale, mean = norm_stats(model, x)
    n = final_norm(model)
    torch.testing.assert_close(n(x), centred(model, x) / scale.unsqueeze(-1) * n.weight + getattr(n, "bias", 0.0))
    if fam == "gpt2":
        torch.testing.assert_close(mean, x.mean(-1))
    else:
        assert torch.equal(mean, torch.zeros(3)) and torch.equal(centred(model, x), x)


def test_check_layer_names_the_range():
    model = make_model("llama-gqa")
    n = model.config.num_hidden_layers
    assert check_layer(model, n - 1) == n - 1
    for bad in (n, -1, True, "1"):
        with pytest.raises(IndexError, match=f"LoRA layer .* out of range: this model has layers 0..{n - 1}"):
            check_layer(model, bad, "LoRA layer")


# --- interventions: a new kind is one class -----------------------------------------------------------

class Halve(Ablation):
    """A kind for the test: the ablated heads' outputs are halved."""
    name = "halve-for-test"

    def apply(self, x, mask, ref):
        return x * mask + (1 - mask) * 0.5 * x


def test_a_new_ablation_kind_is_one_class_and_every_head_method_can_use_it():
    model = make_model("llama-gqa")
    cases = random_cases(model, n=3, seed=4)
    register_ablation(Halve())
    try:
        assert ablation("halve-for-test").name == "halve-for-test"
        with ablate_heads(model, ["1_1"], method="halve-for-test"):
            halved = last_logits(model, TOK, cases)
        with ablate_heads(model, ["1_1"]):
            zeroed = last_logits(model, TOK, cases)
        plain = last_logits(model, TOK, cases)
        assert not torch.allclose(halved, zeroed) and not torch.allclose(halved, plain)
        sweep = head_sweep_cases(model, TOK, cases, heads=["1_1"], method="halve-for-test", run=Run(progress=False))
        zero = head_sweep_cases(model, TOK, cases, heads=["1_1"], run=Run(progress=False))
        assert not sweep.equals(zero)
        with pytest.raises(ValueError, match="must be 'zero' or 'mean', not 'halve-for-test'"):
            attribution_patching_cases(model, TOK, cases, heads=["1_1"], ablation="halve-for-test", run=Run(progress=False))
    finally:
        ABLATIONS.pop("halve-for-test")
    with pytest.raises(ValueError, match="unknown ablation method 'halve-for-test'"):
        ablation("halve-for-test")


def test_mean_ablation_needs_its_reference():
    model = make_model("llama-gqa")
    with pytest.raises(ValueError, match="needs means=head_means"):
        with ablate_heads(model, ["1_1"], method="mean"):
            pass
    cases = random_cases(model, n=3, seed=4)
    with ablate_heads(model, ["1_1"], method="mean", means=head_means(model, TOK, cases)):
        trace(model, TOK, cases, keep=())


# --- one Comparison ------------------------------------------------------------------------------

def test_one_comparison_for_heads_lora_and_gender():
    model = make_model("llama-gqa")
    cases = random_cases(model, n=3, seed=5)
    c = compare(model, TOK, cases, condition=lambda: ablate_heads(model, ["1_1"]), labels=("ori", "inv"))
    assert torch.equal(c.imp_ori, c.imp_a) and torch.equal(c.coef_inv, c.coef_b)
    assert {"imp_ori", "imp_inv", "coef_ori", "coef_inv"} <= set(c.top(3).columns)
    s = c.swapped()
    assert s.labels == ("inv", "ori") and torch.equal(s.score, -c.score) and s.traces == c.traces[::-1]
    with pytest.raises(AttributeError):
        c.imp_lora
    # a head CNA cached before the conditions had labels still loads
    old = dict(head="1_1", layers=c.layers, targets=c.targets, imp_ori=c.imp_a, imp_inv=c.imp_b, coef_ori=c.coef_a,
               coef_inv=c.coef_b, seconds=1.0)
    back = Comparison.from_record(old)
    assert back.labels == ("ori", "inv") and back.subject == "1_1" and torch.equal(back.score, c.score)
    again = Comparison.from_record(dataclasses.replace(c, subject="1_1").record())
    assert torch.equal(again.imp_inv, c.imp_b) and again.subject == "1_1"
    with pytest.raises(ValueError, match="same_below needs norm='a'"):
        Scoring(norm="own", same_below=1)


# --- LoRA hyper-parameters -----------------------------------------------------------------------

def test_lora_hyperparameters_key_the_run_as_the_seven_arguments_did():
    model = make_model("llama-mha")
    cases = random_cases(model, n=4, seed=1, gold="random")
    hp = lora.LoraHParams(epochs=2, batch_size=4, seed=3, progress=False)
    assert lora.run_key(model, [cases], layer=1, lr=0.01, **hp.key()) == \
        lora.run_key(model, [cases], layer=1, lr=0.01, epochs=2, batch_size=4, seed=3, r=8, alpha=16)
    assert dataclasses.replace(hp, progress=True).key() == hp.key()        # a progress bar changes nothing
    p = dict(ops="+", n_train=8, n_val=2, n_test=2, epochs=3, batch_size=2)
    assert lora.Splits.from_profile(p, 7) == lora.Splits("+", 8, 2, 2, 7)
    assert lora.LoraHParams.from_profile(p, 7).key() == dict(epochs=3, batch_size=2, seed=7, r=8, alpha=16)


# --- results: two runs compared --------------------------------------------------------------------

def test_results_differences_ignore_only_what_changes_between_runs(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    rec = dict(table=[1.0, 2.0], date="today", seconds=dict(total=3.0), code_commit="x", verdict="replicates")
    save_results("01_x", rec, a)
    save_results("01_x", dict(rec, date="tomorrow", seconds=dict(total=9.0), code_commit="y"), b)
    assert differences(a, b) == []
    save_results("01_x", dict(rec, table=[1.0, 2.5]), b)
    save_results("02_y", rec, b)
    d = differences(a, b)
    assert any("/table/1: 2.0 != 2.5" in x for x in d) and any("02_y.json: only in" in x for x in d)


# --- results schema -------------------------------------------------------------------------------

def test_every_committed_results_file_holds_what_its_readers_need():
    from cna_utils.store.schema import problems
    root = PKG.parent / "results" / "qwen2.5-coder-0.5b" / "book"
    files = sorted(root.glob("*.json")) + sorted((root / "second").glob("*.json"))
    assert len(files) >= 14
    for f in files:
        name = str(f.relative_to(root).with_suffix(""))
        assert problems(name, json.loads(f.read_text())) == [], name


def test_a_chapter_file_missing_a_read_key_is_written_and_then_refused(tmp_path):
    from cna_utils.store.schema import chapter_of, field
    ok = dict(model="m", profile="smoke", verdicts=[], best_shallow_layer=3, figure_2={}, data=dict(template=2),
              measures={})
    save_results("05_lora", ok, tmp_path)
    bad = {k: v for k, v in ok.items() if k != "best_shallow_layer"}
    bad["data"] = dict(template="2")
    with pytest.raises(ValueError, match=r"best_shallow_layer: missing; data.template: str, expected int"):
        save_results("05_lora", bad, tmp_path / "b")
    assert (tmp_path / "b" / "05_lora.json").exists()                   # nothing computed is lost
    assert chapter_of("02_cna_division") == "02_cna" and chapter_of("second/02_cna") == "02_cna"
    assert chapter_of("result") is None and field(ok, "data.template") == 2
    with pytest.raises(KeyError, match="'data.seed'"):
        field(ok, "data.seed")
