"""LoRA on ONE attention layer (paper Section 5), trained, saved, resumed and applied in place.

Usage::

    train, val, test = lora_splits(tok, ops="+-", n_train=1600, n_val=200, n_test=400)
    run = train_lora(model, tok, 8, train, val, test, lr=1e-3, out_dir="cache/lora/L08")
    with lora_applied(model, run["adapter"]):        # the same model object, LoRA active
        accuracy(model, tok, test)
    # leaving the block restores the original modules (nothing merged, nothing copied)

    runs = lora_per_layer(model, tok, [0, 8, 15], train, val, test, lrs=[1e-3, 5e-4, 1e-4], cache_dir=...)

What is trained: peft LoRA (rank ``r``, scale ``alpha / r``, no dropout) on every linear map inside
layer l's attention block (q, k, v and o for Llama) and nothing else. The loss is the mean
cross-entropy of the answer tokens only (the model reads "a op b =" and must write the answer).
Optimiser AdamW, no weight decay, constant learning rate. One seed fixes the adapter's
initialisation and the order of the training examples, so a run is repeatable bit for bit on
the same machine. After each epoch the held-out accuracy (every answer token right) is measured;
the adapter of the best epoch is the one saved, and the test set is scored with it.

Resume: each run writes ``out_dir/result.json`` last; a run whose file exists is loaded, not
retrained. The directory name of a run in ``lora_per_layer`` carries a hash of everything that
determines it (model, layer, learning rate, sizes, data), so changing any of them trains anew.
"""
from __future__ import annotations

import json
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from cna_utils.data.arithmetic import align, AlignmentError, arithmetic_dataset, TEMPLATES
from cna_utils.measure.evaluate import accuracy
from cna_utils.model.forward import answer_logits, encode, model_device
from cna_utils.model.families import attention, check_layer, stores_in_out
from cna_utils.store.cache import artefact_key, artefact_path, load_or_compute
from cna_utils.store.results import save_results

__all__ = ["Splits", "LoraHParams", "attention_linears", "lora_config", "lora_applied", "lora_splits", "train_lora", "train_cached", "run_key",
           "lora_per_layer", "trainable_parameters", "test_correct", "template_choice", "loss_still_falling"]


@dataclass(frozen=True)
class Splits:
    """The sizes of Section 5's 2-digit dataset (``lora_splits``): operations, sentences per split,
    and the seed that draws the operand pairs."""
    ops: str = "+-"
    n_train: int = 1600
    n_val: int = 200
    n_test: int = 400
    seed: int = 0

    @classmethod
    def from_profile(cls, p: dict, seed: int) -> "Splits":
        """A profile's LoRA section (``profiles.yaml``, ``ch5``) with the book's seed."""
        return cls(p["ops"], p["n_train"], p["n_val"], p["n_test"], seed)


@dataclass(frozen=True)
class LoraHParams:
    """How a LoRA model is trained, apart from its layer and learning rate: epochs, batch size, the
    seed of the adapter's initialisation and of the example order, LoRA rank and alpha. ``progress``
    (a progress bar) changes nothing that is computed."""
    epochs: int = 1
    batch_size: int = 16
    seed: int = 0
    r: int = 8
    alpha: int = 16
    progress: bool = True

    @classmethod
    def from_profile(cls, p: dict, seed: int) -> "LoraHParams":
        return cls(epochs=p["epochs"], batch_size=p["batch_size"], seed=seed)

    def key(self) -> dict:
        """What a run's cache key and result record: every field but ``progress``."""
        return dict(epochs=self.epochs, batch_size=self.batch_size, seed=self.seed, r=self.r, alpha=self.alpha)


def attention_linears(model, layer: int) -> list[str]:
    """Full module names of the linear maps inside layer ``layer``'s attention block (what LoRA
    adapts). Raises a clear ``IndexError`` for a layer out of range."""
    check_layer(model, layer, "LoRA layer")
    attn = attention(model, layer)
    prefix = next(name for name, m in model.named_modules() if m is attn)
    names = [f"{prefix}.{n}" for n, m in attn.named_modules()
             if isinstance(m, nn.Linear) or stores_in_out(m)]
    if not names:
        raise ValueError(f"layer {layer}'s attention block has no linear maps to adapt")
    return names


def lora_config(model, layer: int, r: int = 8, alpha: int = 16):
    """A peft ``LoraConfig`` that targets layer ``layer``'s attention linears only."""
    from peft import LoraConfig
    if r < 1:
        raise ValueError(f"the LoRA rank r must be >= 1, got {r!r}")
    names = attention_linears(model, layer)
    in_out = {stores_in_out(model.get_submodule(n)) for n in names}
    if len(in_out) > 1:
        raise ValueError(f"layer {layer}'s attention mixes [in, out] and [out, in] weights; one LoRA config cannot adapt both")
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, bias="none", target_modules=names,
                      fan_in_fan_out=in_out.pop())                   # GPT-2's Conv1D stores [in, out]


def trainable_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@contextmanager
def _peft_in_place(model, make):
    """Wrap ``model`` with peft (which injects LoRA modules INTO ``model``), yield the PeftModel,
    and on exit remove the LoRA modules again and restore every parameter's ``requires_grad``."""
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    pm = make(model)
    try:
        yield pm
    finally:
        pm.unload()
        for attr in ("peft_config", "_hf_peft_config_loaded"):
            if attr in model.__dict__:
                delattr(model, attr)
        for n, p in model.named_parameters():
            p.requires_grad_(flags.get(n, False))


@contextmanager
def lora_applied(model, adapter):
    """Within the block ``model`` itself runs with the saved LoRA adapter (a directory written by
    ``train_lora``, or a run dict from it); every ``cna_utils`` function works on it unchanged."""
    from peft import PeftModel
    path = Path(adapter["adapter"] if isinstance(adapter, dict) else adapter)
    if not (path / "adapter_config.json").exists():
        raise FileNotFoundError(f"no LoRA adapter at {path} (expected adapter_config.json there; train one with "
                                "train_lora)")
    with _peft_in_place(model, lambda m: PeftModel.from_pretrained(m, str(path))):
        yield model


def lora_splits(tokenizer, sizes: Splits = Splits(), templates="all"):
    """The 2-digit dataset of Section 5 with negative results ("32 - 54 = -22"), numerals, split
    into train / held-out / test BY OPERAND PAIR (a pair's templates all land in one split, so the
    test set asks questions never seen in training). Sizes are in sentences; each op gets an equal
    share. Returns three lists of aligned cases."""
    ops, n_train, n_val, n_test, seed = sizes.ops, sizes.n_train, sizes.n_val, sizes.n_test, sizes.seed
    if min(n_train, n_val, n_test) < 1:
        raise ValueError(f"every split needs at least one sentence, got train={n_train}, val={n_val}, "
                         f"test={n_test}")
    n_t = 4 if templates == "all" else len(list(templates))
    per_op = [(n + len(ops) * n_t - 1) // (len(ops) * n_t) for n in (n_train, n_val, n_test)]
    cases = arithmetic_dataset(ops=ops, digits=(2,), templates=templates, words=False, n=sum(per_op), seed=seed,
                               negative=True, tokenizer=tokenizer)
    by_pair: dict = {}
    for c in cases:
        by_pair.setdefault((c.op, c.a, c.b), []).append(c)
    splits = ([], [], [])
    for op in ops:
        pairs = sorted(p for p in by_pair if p[0] == op)
        random.Random(f"{seed}-{op}").shuffle(pairs)
        start = 0
        for s, n in zip(splits, per_op):
            for p in pairs[start:start + n]:
                s.extend(by_pair[p])
            start += n
    return tuple(list(s) for s in splits)


def template_choice(model, tokenizer, sizes: Splits = Splits(), templates=(1, 2, 3, 4, 5),
                    n_choose: int | None = None, cache_dir=None) -> tuple[int, pd.DataFrame]:
    """The template the chapter trains and tests on, by a stated rule: the one on whose TRAINING
    sentences (``lora_splits``' first split, never the test) the original model gets the most whole
    answers right; a tie goes to the lower number. Every split uses the same operand pairs whatever
    the template, so the templates are compared on the same questions. ``n_choose``: read only this
    many training sentences, an equal share per operation (None: all of them).

    Returns (template, table): one row per template with an example, ``n``, the whole-answer and
    first-token accuracy, the whole-answer accuracy per operation and on negative results, and
    ``why_not`` for a template whose answers cannot follow its prompt as a new token (template 5's
    "3-5=" runs "=-" into one token for some tokenizers)."""
    ops = sizes.ops

    def measure():
        rows = []
        for t in templates:
            try:
                train, _, _ = lora_splits(tokenizer, sizes, templates=[t])
                if n_choose is not None:
                    train = [c for op in ops for c in [x for x in train if x.op == op][:-(-n_choose // len(ops))]]
            except AlignmentError as e:
                rows.append(dict(template=t, example=TEMPLATES[ops[0]][t - 1], n=0, why_not=str(e).split(":")[0]))
                continue
            acc = accuracy(model, tokenizer, train)
            neg = acc[[c.result < 0 for c in train]]
            rows.append(dict(template=t, example=f"{train[0].prompt} {train[0].answer}", n=len(train),
                             answer=float(acc.answer_correct.mean()), first=float(acc.first_correct.mean()),
                             **{op: float(g.answer_correct.mean()) for op, g in acc.groupby("op")},
                             negative=float(neg.answer_correct.mean()) if len(neg) else float("nan"), why_not=""))
        return pd.DataFrame(rows)
    path = artefact_path(cache_dir, "lora-templates", model, sizes.ops, sizes.n_train, sizes.n_val, sizes.n_test,
                         sizes.seed, list(templates), n_choose, suffix=".json", code=__name__)
    table = load_or_compute(path, measure, save=lambda df, p: df.to_json(p, orient="records"),
                            load=lambda p: pd.read_json(p, orient="records"))
    usable = table[table.n > 0]
    if usable.empty:
        raise ValueError(f"none of the templates {list(templates)} gives answers that follow the prompt as a new "
                         "token with this tokenizer: pass other templates (see data.TEMPLATES)")
    best = usable.sort_values(["answer", "template"], ascending=[False, True]).iloc[0]
    return int(best.template), table.reset_index(drop=True)


def _accuracy(model, tokenizer, cases) -> dict:
    acc = accuracy(model, tokenizer, cases)
    return dict(answer=float(acc.answer_correct.mean()), first=float(acc.first_correct.mean()),
                by_op=acc.groupby("op").answer_correct.mean().astype(float).to_dict())


def test_correct(model, tokenizer, adapter, cases):
    """Per case: is the whole answer right with ``adapter`` applied (``adapter`` None: the model as it is)?
    A numpy bool array, for intervals over the test sentences."""
    if adapter is None:
        return accuracy(model, tokenizer, cases).answer_correct.to_numpy(dtype=bool)
    with torch.no_grad(), lora_applied(model, adapter):
        return accuracy(model, tokenizer, cases).answer_correct.to_numpy(dtype=bool)


def _step(model, opt, batch) -> float:
    """One optimiser step on ``batch``'s teacher-forced answer tokens; the loss before the step."""
    logits = answer_logits(model, batch)
    loss = F.cross_entropy(logits.float().flatten(0, 1), batch.targets.flatten(), ignore_index=-1)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


def train_lora(model, tokenizer, layer: int, data, lr: float = 1e-3, hp: LoraHParams = LoraHParams(),
               out_dir=None) -> dict:
    """Train LoRA on layer ``layer``'s attention (see the module docstring) and save the adapter
    under ``out_dir/adapter``. Returns (and writes to ``out_dir/result.json``) the run: layer, lr,
    steps, per-step ``losses``, per-epoch ``val`` accuracy, ``best_epoch``, ``test`` accuracy of the
    saved adapter, ``trainable`` parameter count and ``seconds``. An existing result is loaded.
    ``data``: (train, val, test) lists of cases; val and test may be None or empty."""
    train, val, test = data
    epochs, batch_size, seed, r, alpha, progress = hp.epochs, hp.batch_size, hp.seed, hp.r, hp.alpha, hp.progress
    if out_dir is None:
        raise ValueError("train_lora needs out_dir: the adapter and its result are saved there")
    out = Path(out_dir)
    done = out / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    if len(train) == 0:
        raise ValueError("the training set is empty: pass at least one case (see lora_splits)")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    from peft import get_peft_model
    train = align(train, tokenizer)
    cfg = lora_config(model, layer, r, alpha)
    t0 = time.time()
    torch.manual_seed(seed)                                 # the adapter's initialisation
    order_rng = torch.Generator().manual_seed(seed)         # the order of the examples
    dev = model_device(model)
    losses, val_acc, best, test_acc = [], [], None, None
    was_training = model.training
    with _peft_in_place(model, lambda m: get_peft_model(m, cfg)) as pm:
        n_train = trainable_parameters(model)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
        model.eval()                                        # no dropout anywhere: eval and train modes agree
        steps = epochs * ((len(train) + batch_size - 1) // batch_size)
        bar = tqdm(total=steps, desc=f"LoRA layer {layer} lr {lr:g}", disable=not progress, leave=False)
        for epoch in range(epochs):
            order = torch.randperm(len(train), generator=order_rng).tolist()
            for i in range(0, len(order), batch_size):
                losses.append(_step(model, opt, encode(tokenizer, [train[j] for j in order[i:i + batch_size]], dev)))
                bar.update()
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
            with torch.no_grad():
                v = _accuracy(model, tokenizer, val) if val else None
            val_acc.append(v)
            if v is None or best is None or v["answer"] > val_acc[best]["answer"]:
                best = epoch
                pm.save_pretrained(str(out / "adapter"))
                if test:
                    with torch.no_grad():
                        test_acc = _accuracy(model, tokenizer, test)
        bar.close()
    model.train(was_training)
    result = dict(layer=layer, lr=lr, epochs=epochs, batch_size=batch_size, seed=seed, r=r, alpha=alpha,
                  steps=len(losses), losses=losses, val=val_acc, best_epoch=best, test=test_acc,
                  trainable=n_train, seconds=time.time() - t0, adapter=str((out / "adapter").resolve()))
    save_results(done.stem, result, out)                    # written last, atomically: its presence means "finished"
    return result


def run_key(model, cases_lists, **hyper) -> str:
    """The cache key of a LoRA run (``cache.artefact_key``): the weights it starts from (a pruned or
    edited model under the same name gets another key), the data and the hyper-parameters."""
    return artefact_key(model, sorted(hyper.items()),
                        [[list(c.prompt_ids) + list(c.answer_ids) for c in cs] for cs in cases_lists], length=12, code=__name__)


def train_cached(model, tokenizer, layer: int, data, lr: float, cache_dir, tag: str = "",
                 hp: LoraHParams = LoraHParams()) -> dict:
    """``train_lora`` into ``cache_dir/lora/<tag>L<layer>-lr<lr>-<run_key>``: a finished run with the same
    weights, data and settings is loaded instead of trained again."""
    key = run_key(model, list(data), layer=layer, lr=lr, **hp.key())
    out = Path(cache_dir) / "lora" / f"{tag + '-' if tag else ''}L{layer:02d}-lr{lr:g}-{key}"
    return train_lora(model, tokenizer, layer, data, lr=lr, hp=hp, out_dir=out)


def lora_per_layer(model, tokenizer, layers, data, lrs=(1e-3, 5e-4, 1e-4), select_on=None,
                   hp: LoraHParams = LoraHParams(), cache_dir="cache") -> pd.DataFrame:
    """One LoRA model per layer in ``layers`` (paper Figure 2), each run saved under ``cache_dir/lora``
    and skipped when already there. The learning rate is chosen among ``lrs`` by held-out accuracy:
    for every layer (``select_on=None``, as the paper), or once on layer ``select_on`` and reused.
    Returns one row per (layer, lr) trained, with ``chosen`` marking the run reported for its layer.
    ``data``: the (train, val, test) cases of ``lora_splits``."""
    layers = list(layers)
    if not layers:
        raise ValueError("no layers given: pass the attention layers to put LoRA on")
    if not lrs:
        raise ValueError("no learning rates given")
    for l in layers + ([select_on] if select_on is not None else []):
        attention_linears(model, l)                         # fail early on a layer out of range
    train, val, test = (align(x, tokenizer) for x in data)
    if len(train) == 0:
        raise ValueError("the training set is empty: pass at least one case (see lora_splits)")

    def run(layer, lr):
        return train_cached(model, tokenizer, layer, (train, val, test), lr, cache_dir, hp=hp)

    def best_of(rs):
        return max(rs, key=lambda x: (x["val"][x["best_epoch"]] or {}).get("answer", 0.0))

    rows = []
    fixed = None
    if select_on is not None:
        trial = [run(select_on, lr) for lr in lrs]
        fixed = best_of(trial)["lr"]
        rows += [dict(x, chosen=select_on in layers and x["lr"] == fixed) for x in trial]
    for l in tqdm(layers, desc="LoRA per layer", disable=not hp.progress):
        if select_on is not None and l == select_on:
            continue
        rs = [run(l, fixed)] if fixed is not None else [run(l, lr) for lr in lrs]
        win = best_of(rs)
        rows += [dict(x, chosen=x is win) for x in rs]
    df = pd.DataFrame(rows)
    df["val_acc"] = [x[b]["answer"] if x[b] else float("nan") for x, b in zip(df.val, df.best_epoch)]
    df["test_acc"] = [t["answer"] for t in df.test]
    df["test_first"] = [t["first"] for t in df.test]
    return df.sort_values(["layer", "lr"]).reset_index(drop=True)


def loss_still_falling(losses, window: int = 10, tol: float = 0.05) -> tuple[bool, float]:
    """Whether a training run had not converged: (the mean loss of the last ``window`` steps is more
    than ``tol`` (relative) below the mean of the ``window`` steps before, that relative fall).
    A run shorter than two windows compares its two halves."""
    x = [float(v) for v in losses]
    w = min(window, len(x) // 2)
    if w < 1:
        return False, float("nan")
    before, last = sum(x[-2 * w:-w]) / w, sum(x[-w:]) / w
    fall = (before - last) / abs(before) if before else 0.0
    return fall > tol, fall

