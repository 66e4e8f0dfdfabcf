"""The steps chapters 2-4 share: the 1-digit cases, the head to compare against, the showcase case,
and the CNA of every case (computed once, cached on disk, reused by later chapters).

Usage::

    cases, acc = one_digit_cases(model, tok)                  # 1D+ and 1D-, and the model's accuracy
    ok = [c for c, r in zip(cases, acc.first_correct) if r]   # the cases the model answers
    head, why = chapter1_head(results_dir)                    # chapter 1's top addition head
    case, why = showcase_case(model, tok, ok)                 # "3 + 5 =" -> "8", or the nearest it gets right
    res = cna_cases(model, tok, ok, head, cache_dir=...)      # imp/coef of both models, every neuron
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from .circuits import lowest_neuron
from .compare import compare
from .data import arithmetic_dataset
from .evaluate import accuracy
from .heads import ablate_heads, head_name, head_sweep, parse_heads
from .models import spec, weights_fingerprint
from .neurons import cna, coef_decrease, neuron_effects, run_masked, top_neurons
from .tracing import trace

__all__ = ["one_digit_cases", "chapter1_head", "top_head_by_sweep", "showcase_case", "CNAResult", "cna_cases",
           "depth_map", "mask_keep", "importance_vs_effect", "lowest_neuron_effect", "Study", "prepare_study",
           "STUDIES", "study_item", "study_results_name", "study_banner",
           "operand_positions", "scale_layer", "lora_groups", "lora_layers", "lora_coefficients",
           "lora_cna"]

PAPER_LAYERS = 32          # Llama-7B
PAPER_DEEP_START = 17      # "17th-31th layers" (deep FFN layers, Table 5)
PAPER_SHALLOW_FFN_END = 16    # FFN layers 0-15 (Table 8)
PAPER_SHALLOW_ATTN_END = 17   # attention layers 0-16 (Table 8)


def depth_map(n_layers: int) -> dict:
    """The paper's Llama-7B layer ranges scaled to a model with ``n_layers`` layers (same fraction of
    depth): ``deep`` (Table 5's 17-31), ``shallow_ffn`` (Table 8's FFN 0-15) and ``shallow_attn``
    (attention 0-16), each a list of layer numbers."""
    def at(x):
        return int(round(x * n_layers / PAPER_LAYERS))
    return dict(deep=list(range(at(PAPER_DEEP_START), n_layers)),
                shallow_ffn=list(range(at(PAPER_SHALLOW_FFN_END))),
                shallow_attn=list(range(at(PAPER_SHALLOW_ATTN_END))))


def scale_layer(paper_layer: int, n_layers: int) -> int:
    """The layer at the same fraction of depth as Llama-7B's ``paper_layer`` (of 32)."""
    return min(n_layers - 1, int(round(paper_layer * n_layers / PAPER_LAYERS)))


def lora_groups(n_layers: int) -> dict:
    """Table 10's groups of LoRA layers (the paper's 1-9, 10-16, 17-30 of 32) scaled to ``n_layers``;
    the first and last layer stay out, as the paper leaves out its 0th and 31st."""
    b = [scale_layer(x, n_layers) for x in (1, 10, 17, 31)]
    return {"1-9": list(range(b[0], b[1])), "10-16": list(range(b[1], b[2])), "17-30": list(range(b[2], b[3]))}


TABLE9_LAYERS = (9, 15, 16, 19, 20)


def lora_layers(n_layers: int, k: int | None, table9: bool = True) -> list[int]:
    """The LoRA layers a chapter trains: ``k`` evenly spread layers (every layer for None), plus
    the paper's Table 9 layers (9, 15, 16, 19, 20 of 32) scaled when ``table9``."""
    from .profiles import spread_layers
    extra = {scale_layer(x, n_layers) for x in TABLE9_LAYERS} if table9 else set()
    return sorted(set(spread_layers(n_layers, k)) | extra)


def lora_coefficients(model, tokenizer, cases, res: "CNAResult", runs: dict, ks=(50, 30, 20, 10)):
    """Paper Tables 9-10: the coefficient scores of each case's top-k CNA neurons (``res``, the
    head comparison of chapter 2) in the original model and in each LoRA model of ``runs``
    ({layer: run or adapter dir}). Returns (coefs, increase): ``coefs`` [models, cases, kmax] with
    row 0 the original, and one row per (layer, k) of the mean coefficient increase (%) over the
    cases, the sign-aware ``-coef_decrease`` (positive = the LoRA model's coefficients are larger in
    the direction the neuron pushes)."""
    from .lora import lora_applied
    kmax = max(ks)
    tops = [res.top(kmax, case=i) for i in range(len(cases))]
    layers_needed = sorted({int(l) for t in tops for l in t.layer})

    def coefs():
        tr = trace(model, tokenizer, cases, layers=layers_needed, keep=("coef",))
        out = torch.zeros(len(cases), kmax)
        for i, t in enumerate(tops):
            li = [layers_needed.index(int(l)) for l in t.layer]
            out[i, :len(t)] = tr.coef[i, li, list(t.neuron)]
        return out

    table = [coefs()]
    for l, run in runs.items():
        with lora_applied(model, run):
            table.append(coefs())
    rows = []
    for j, l in enumerate(runs, start=1):
        for k in ks:
            inc = [-coef_decrease(table[0][i, :k], table[j][i, :k]) for i in range(len(cases))]
            rows.append(dict(layer=l, k=k, increase=float(torch.tensor(inc).nanmean())))
    return torch.stack(table), pd.DataFrame(rows)


def lora_cna(model, tokenizer, cases, adapter, layers=None, progress: bool = False, scale: str = "original",
             target: str = "prediction"):
    """CNA between a LoRA model and the original: returns ``(imp_lora, imp_ori, tr_lora, tr_ori)``
    (scores [cases, layers, neurons]; traces with ``resid_mid`` and ``coef`` of ``layers``).
    ``target="prediction"`` (default, as the authors' CNA code) scores each case's answer as the
    ORIGINAL model's top-1 token at the last position; ``target="gold"`` scores the first token of
    the gold answer (the two differ only where the original model is wrong). ``scale="original"``
    (default, as the authors' code and the head CNA) freezes both models' final norm at the ORIGINAL
    model's statistics; ``scale="own"`` freezes each model's at its own final residual. Below the
    LoRA layer both models compute the same thing, so at the original's scale the two scores are
    equal there (tested): pass ``layers`` from the LoRA layer up to skip that work."""
    if scale not in ("original", "own"):
        raise ValueError(f"scale must be 'original' (the authors' choice) or 'own', got {scale!r}")
    if target not in ("prediction", "gold"):
        raise ValueError(f"target must be 'prediction' (the original model's top-1, the authors' choice) or 'gold', "
                         f"got {target!r}")
    from .lora import lora_applied
    c = compare(model, tokenizer, cases, condition=lambda: lora_applied(model, adapter), target=target, layers=layers,
                norm="a" if scale == "original" else "own", progress=progress)
    return c.imp_b, c.imp_a, c.traces[1], c.traces[0]


def one_digit_cases(model, tokenizer, ops: str = "+-", template: int = 4):
    """Every 1-digit case of ``ops`` written as ``"a op b ="`` (template 4, numerals) and the model's
    per-case accuracy frame."""
    cases = arithmetic_dataset(ops=ops, digits=(1,), templates=[template], words=False, tokenizer=tokenizer)
    return cases, accuracy(model, tokenizer, cases)


def chapter1_head(results_dir, op: str = "+") -> tuple[str | None, str]:
    """Chapter 1's top head for ``op`` (Table 2), read from its results file, with a sentence that
    says where it came from; ``(None, reason)`` when chapter 1 has not been run."""
    path = Path(results_dir) / "01_arithmetic_heads.json"
    if not path.exists():
        return None, f"no chapter-1 results at {path}"
    r = json.loads(path.read_text())
    head = r["table_2"]["top_heads"][op]
    return head, f"chapter 1 ({r['profile']} profile) found {head} to be the top head for 2-digit {op}"


def top_head_by_sweep(model, tokenizer, cases, batch_size: int = 64) -> str:
    """The head whose zero ablation lowers log p(answer) most over ``cases`` (every head swept)."""
    sw = head_sweep(model, tokenizer, cases, by="op", batch_size=batch_size, progress=False)
    sw = sw[sw.op == "all"]
    return sw.loc[(sw.base_gold_logprob - sw.gold_logprob).idxmax(), "head"]


def showcase_case(model, tokenizer, correct, a: int = 3, b: int = 5, op: str = "+"):
    """The paper's case "3+5=" if the model answers it, else the 1D case of ``op`` it answers that is
    nearest in operands (|a'-a| + |b'-b|, ties: the higher log p of the answer), preferring cases
    whose whole answer is one token (as "8" is). Returns the case and a sentence saying which and why."""
    pool = [c for c in correct if c.op == op]
    if not pool:
        raise ValueError(f"the model answers no 1-digit {op} case correctly: there is no case to analyse")
    one_token = [c for c in pool if len(c.answer_ids) == 1]      # like "8": the answer is the predicted token
    pool = one_token or pool
    exact = [c for c in pool if (c.a, c.b) == (a, b)]
    if exact:
        return exact[0], f'the model answers "{exact[0].prompt}" -> "{exact[0].answer}" correctly, as in the paper'
    tr = trace(model, tokenizer, pool, keep=())
    lp = torch.log_softmax(tr.logits, -1)
    conf = [float(lp[i, c.answer_ids[0]]) for i, c in enumerate(pool)]
    best = min(range(len(pool)), key=lambda i: (abs(pool[i].a - a) + abs(pool[i].b - b), -conf[i]))
    c = pool[best]
    return c, (f'the model does not answer "{a} {op} {b} =" correctly, so we take the nearest case it does '
               f'answer{" with a one-token answer" if one_token else ""}: "{c.prompt}" -> "{c.answer}" '
               f'(p = {torch.tensor(conf[best]).exp():.2f})')


@dataclass
class CNAResult:
    """Importance and coefficient scores of every neuron at the last position, for the original
    model ("ori") and the model with ``head`` zeroed ("inv"): tensors [cases, layers, neurons]."""
    head: str
    layers: list
    targets: list
    imp_ori: torch.Tensor
    imp_inv: torch.Tensor
    coef_ori: torch.Tensor
    coef_inv: torch.Tensor
    seconds: float

    @property
    def score(self) -> torch.Tensor:
        return cna(self.imp_ori, self.imp_inv)

    def top(self, k: int, case: int | None = None):
        """Top-k CNA neurons per case with all four scores (one case with ``case=i``)."""
        cols = dict(imp_ori=self.imp_ori, imp_inv=self.imp_inv, coef_ori=self.coef_ori, coef_inv=self.coef_inv)
        if case is not None:
            t = top_neurons(self.score[case], k, layers=self.layers, **{n: v[case] for n, v in cols.items()})
            t["case"] = case
            return t
        return top_neurons(self.score, k, layers=self.layers, **cols)


def _key(model, cases, head) -> str:
    """The cache key of a CNA: the weights (``weights_fingerprint``), the head and the cases."""
    text = json.dumps([weights_fingerprint(model), head, [list(c.prompt_ids) + [c.answer_ids[0]] for c in cases]])
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def cna_cases(model, tokenizer, cases, head, cache_dir=None, progress: bool = False) -> CNAResult:
    """CNA between the model and the model with ``head`` zeroed, for every case's first answer token
    (the final norm of both frozen at the original model's statistics, as the authors do). With
    ``cache_dir`` the result is saved and a later call with the same model, head and cases loads it."""
    (hl, hh), = parse_heads(model, [head])
    name = head_name(hl, hh)
    path = Path(cache_dir) / f"cna-{_key(model, cases, name)}.pt" if cache_dir else None
    if path is not None and path.exists():
        return CNAResult(**torch.load(path))
    # Below the head's layer both models have the same residual stream and coefficients at every
    # position, and both are scored with the original's final-norm statistics: their importance
    # scores are identical there (tested), so the intervened model is scored from layer hl on.
    c = compare(model, tokenizer, cases, condition=lambda: ablate_heads(model, [(hl, hh)]), same_below=hl,
                progress=progress)
    res = CNAResult(name, c.layers, c.targets, c.imp_a, c.imp_b, c.coef_a, c.coef_b, c.seconds)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(res.__dict__, path)
    return res

def mask_keep(model, tokenizer, cases, res: CNAResult, ks=(99, 50, 30, 20, 10), deep_layers=None,
              progress: bool = False) -> pd.DataFrame:
    """Paper Table 5, per case and k: is the answer still the argmax when the case's top-k CNA
    neurons are zeroed ("mask"), when every deep neuron but the case's k top CNA neurons among the
    ``deep_layers`` is zeroed ("keep"), and how much lower are the top-k neurons' coefficient scores
    in the intervened model ("coef", %)? Neurons the head cannot reach score exactly 0, so past them
    the order within a top-k is arbitrary. One forward per case and mode (the k values are rows of
    one batch)."""
    if not ks:
        raise ValueError("ks is empty: give the top-k sizes to test, e.g. (99, 50, 30, 20, 10)")
    deep = list(deep_layers) if deep_layers is not None else depth_map(spec(model).n_layers)["deep"]
    outside = torch.tensor([l not in set(deep) for l in res.layers])
    kmax = max(ks)
    rows = []
    for i, c in enumerate(tqdm(cases, desc="mask / keep", disable=not progress, leave=False)):
        top = res.top(kmax, case=i)
        sets = [list(zip(top.layer[:k], top.neuron[:k])) for k in ks]
        masked = run_masked(model, tokenizer, c.prompt_ids, res.targets[i], sets, mode="zero")
        in_deep = res.score[i].clone()
        in_deep[outside] = float("-inf")              # the top-k among the deep neurons, which "keep" spares
        top_deep = top_neurons(in_deep, min(kmax, int((~outside).sum()) * in_deep.shape[-1]), layers=res.layers)
        kept = run_masked(model, tokenizer, c.prompt_ids, res.targets[i],
                          [list(zip(top_deep.layer[:k], top_deep.neuron[:k])) for k in ks], mode="keep", layers=deep)
        for j, k in enumerate(ks):
            t = top.iloc[:k]
            rows.append(dict(case=i, prompt=c.prompt, k=k, mask_correct=bool(masked["correct"][j]),
                             keep_correct=bool(kept["correct"][j]),
                             coef=coef_decrease(torch.tensor(t.coef_ori.values), torch.tensor(t.coef_inv.values))))
    return pd.DataFrame(rows)


def importance_vs_effect(model, tokenizer, cases, res: CNAResult, n_cases: int, top: int) -> pd.DataFrame:
    """For the first ``n_cases`` cases: the ``top`` neurons by importance score in the original model,
    each with its static importance score and the causal effect of zeroing it alone (drop in
    log p(answer), one batched forward per case)."""
    frames = []
    for i, c in enumerate(cases[:n_cases]):
        t = top_neurons(res.imp_ori[i], top, layers=res.layers)
        eff = neuron_effects(model, tokenizer, c.prompt_ids, res.targets[i], list(zip(t.layer, t.neuron)))
        frames.append(t.assign(case=i, prompt=c.prompt, effect=eff.logprob_drop.values))
    return pd.concat(frames, ignore_index=True)


def lowest_neuron_effect(model, tokenizer, cases, res: CNAResult, ks=(99, 50, 30, 20, 10),
                         progress: bool = False) -> pd.DataFrame:
    """Paper Table 6, per case and k: zero the lowest neuron among the case's top-k CNA neurons (the
    paper's tie rule: the largest importance score in the lowest layer) in the original model and
    measure the coefficient decrease (%) of the other top-k neurons."""
    if not ks:
        raise ValueError("ks is empty")
    kmax = max(ks)
    rows = []
    for i, c in enumerate(tqdm(cases, desc="lowest neuron", disable=not progress, leave=False)):
        top = res.top(kmax, case=i)
        lows = [lowest_neuron(top.iloc[:k]) for k in ks]
        layers_needed = sorted(set(top.layer))
        out = run_masked(model, tokenizer, c.prompt_ids, res.targets[i],
                         [[(int(lo.layer), int(lo.neuron))] for lo in lows], coef_layers=layers_needed)
        for j, (k, lo) in enumerate(zip(ks, lows)):
            t = top.iloc[:k]
            t = t[t.name != lo["name"]]
            li = [layers_needed.index(l) for l in t.layer]
            after = out["coef"][j][li, list(t.neuron)]
            rows.append(dict(case=i, prompt=c.prompt, k=k, lowest=lo["name"], lowest_layer=int(lo.layer),
                             coef=coef_decrease(torch.tensor(t.coef_ori.values), after),
                             still_correct=bool(out["correct"][j])))
    return pd.DataFrame(rows)


@dataclass
class Study:
    """Everything chapters 2-4 start from (see ``prepare_study``)."""
    cases: list            # every 1D+ / 1D- case
    accuracy: pd.DataFrame
    correct: list          # the cases analysed: answered correctly (the showcase case first)
    head: str
    head_note: str
    case: object           # the showcase case
    case_note: str
    res: CNAResult

    @property
    def n_correct_all(self) -> int:
        return int(self.accuracy.first_correct.sum())


# The studies of chapters 2-4: the paper's Section 4 analyses 1D+ and 1D- with the top addition head
# and the case "3+5="; its Appendix B repeats Tables 5, 6 and 8 on 1D/ with the top division head
# (Tables 15-17; "72/8=" is its example).
STUDIES = {"+": dict(ops="+-", case=(3, 5), items={}, suffix="", banner=""),
           "/": dict(ops="/", case=(72, 8), items={"table_5": "table_15", "table_6": "table_16", "table_8": "table_17"},
                     suffix="_division",
                     banner="**This page is the division study, the paper's Appendix B.** It runs this chapter's "
                            "analysis on every 1-digit division case (1D/) with chapter 1's top head for division, "
                            "and compares with the paper's Tables 15-17 (head 14_19 of Llama-7B) where the text "
                            "below names Tables 5, 6 and 8. Read the addition page first; the prose there explains "
                            "each step.")}


def _study(op: str) -> dict:
    if op not in STUDIES:
        raise ValueError(f"OP must be one of {', '.join(map(repr, STUDIES))} (the paper's addition study and its "
                         f"division appendix), got {op!r}")
    return STUDIES[op]


def study_item(key: str, op: str = "+") -> str:
    """The paper's table for a chapter's ``key`` in the study of ``op``: "table_5" is "table_15" for "/"."""
    return _study(op)["items"].get(key, key)


def study_banner(op: str = "+") -> str:
    """A note that opens a chapter run for the study of ``op`` (empty for the paper's main study)."""
    return _study(op)["banner"]


def study_results_name(name: str, op: str = "+") -> str:
    """The results file of chapter ``name`` for the study of ``op``: "02_cna", "02_cna_division"."""
    return name + _study(op)["suffix"]


def prepare_study(model, tokenizer, head=None, results_dir="results", max_cases=None, cache_dir=None,
                  seed: int = 0, progress: bool = True, op: str = "+") -> Study:
    """The 1-digit cases of the study of ``op`` ("+": 1D+ and 1D-, "/": 1D/), the model's accuracy,
    the cases it answers (at most ``max_cases``, the showcase case always included), the head to
    compare against (``head``, else chapter 1's top head for ``op``, else the top head of a sweep over
    these cases) and the CNA of every analysed case (cached in ``cache_dir``)."""
    st = _study(op)
    cases, acc = one_digit_cases(model, tokenizer, ops=st["ops"])
    ok = [c for c, r in zip(cases, acc.first_correct) if r]
    case, case_note = showcase_case(model, tokenizer, ok, *st["case"], op=op)
    rest = [c for c in ok if c is not case]
    if max_cases is not None and len(rest) > max_cases - 1:
        g = torch.Generator().manual_seed(seed)
        keep = sorted(torch.randperm(len(rest), generator=g)[:max(0, max_cases - 1)].tolist())
        rest = [rest[i] for i in keep]
    correct = [case] + rest
    if head is not None:
        (hl, hh), = parse_heads(model, [head])
        head, head_note = head_name(hl, hh), f"the head was given: {head_name(hl, hh)}"
    else:
        head, head_note = chapter1_head(results_dir, op)
        if head is None:
            head = top_head_by_sweep(model, tokenizer, correct)
            head_note += f"; a sweep of every head over the analysed cases picked {head}"
    res = cna_cases(model, tokenizer, correct, head, cache_dir=cache_dir, progress=progress)
    return Study(cases, acc, correct, head, head_note, case, case_note, res)


def operand_positions(tokenizer, case) -> list[int]:
    """Token positions of the two operands in ``case.prompt_ids``: every token of the first run of
    tokens that reads as ``a`` and of the last run that reads as ``b`` (one position per operand
    when it is one token; "72" written as "7", "2" gives two)."""
    texts = [tokenizer.decode([t]).strip() for t in case.prompt_ids]

    def runs(word):
        return [list(range(i, j)) for i in range(len(texts)) for j in range(i + 1, len(texts) + 1)
                if "".join(texts[i:j]) == word and texts[i] and texts[j - 1]]

    ra, rb = runs(str(case.a)), runs(str(case.b))
    if not ra or not rb:
        raise ValueError(f"the operands of {case.prompt!r} are not found among its tokens: {texts}")
    pa = min(ra, key=lambda r: (r[0], -len(r)))
    pb = max((r for r in rb if r[0] > pa[-1]), key=lambda r: (r[-1], len(r)), default=None)
    if pb is None:
        raise ValueError(f"the second operand of {case.prompt!r} is not found after the first: {texts}")
    return pa + pb
