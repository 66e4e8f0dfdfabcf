"""What chapters 2-4 start from: the 1-digit cases, the head to compare against, the showcase case,
and the CNA of every case (computed once, cached on disk, reused by later chapters).

Usage::

    cases, acc = one_digit_cases(model, tok)                  # 1D+ and 1D-, and the model's accuracy
    ok = [c for c, r in zip(cases, acc.first_correct) if r]   # the cases the model answers
    head, why = chapter1_head(results_dir)                    # chapter 1's top addition head
    case, why = showcase_case(model, tok, ok)                 # "3 + 5 =" -> "8", or the nearest it gets right
    res = cna_cases(model, tok, ok, head, cache_dir=...)      # imp/coef of both models, every neuron
    study = prepare_study(model, tok, op="/")                 # all of the above for the division study
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import torch

from cna_utils.measure.compare import compare, Comparison, Scoring
from cna_utils.data.arithmetic import arithmetic_dataset
from cna_utils.measure.evaluate import accuracy
from cna_utils.measure.interventions import ablate_heads
from cna_utils.measure.names import head_name, parse_heads
from cna_utils.model.forward import Run
from cna_utils.measure.sweep import head_sweep
from cna_utils.store.cache import artefact_path, load_or_compute
from cna_utils.store.schema import field
from cna_utils.measure.tracing import trace

__all__ = ["one_digit_cases", "chapter1_head", "top_head_by_sweep", "showcase_case", "cna_cases",
           "Study", "prepare_study", "STUDIES", "study_item", "study_results_name", "study_banner"]

def one_digit_cases(model, tokenizer, ops: str = "+-", template: int = 4):
    """Every 1-digit case of ``ops`` written as ``"a op b ="`` (template 4, numerals) and the model's
    per-case accuracy frame."""
    cases = arithmetic_dataset(ops=ops, digits=(1,), templates=[template], words=False, tokenizer=tokenizer)
    return cases, accuracy(model, tokenizer, cases)


def chapter1_head(results_dir, op: str = "+") -> tuple[str | None, str]:
    """The head chapters 2-4 study for ``op``, chosen from chapter 1's results by a stated rule: the
    top head of ``op`` on the 2-digit sweep among the heads above layer 0 (the paper's chain runs from
    shallow FFN neurons through shallow attention layers into the head, so the head needs layers
    below it); chapter 1's overall top head when no ranked head lies above layer 0. Returns the head
    and a sentence that says where it came from (and names the layer-0 head it passed over);
    ``(None, reason)`` when chapter 1 has not been run."""
    path = Path(results_dir) / "01_arithmetic_heads.json"
    if not path.exists():
        return None, f"no chapter-1 results at {path}"
    r = json.loads(path.read_text())
    top = field(r, "table_2.top_heads")[op]
    ranked = r["table_2"].get("ranked", {}).get(op, [top])                  # older files have no ranking
    above = [h for h in ranked if int(h.split("_")[0]) > 0]
    head = above[0] if above else top
    note = f"chapter 1 ({r['profile']} profile) ranks {top} first for 2-digit {op}"
    if head != top:
        note += (f"; it sits in layer 0, with no attention layer below it for the paper's chain, so the rule "
                 f"(the top head above layer 0) picks {head}, ranked {ranked.index(head) + 1}")
    elif not above:
        note += "; no ranked head lies above layer 0, so the study uses it anyway"
    return head, note


def top_head_by_sweep(model, tokenizer, cases, batch_size: int = 64) -> str:
    """The head whose zero ablation lowers log p(answer) most over ``cases`` (every head swept)."""
    sw = head_sweep(model, tokenizer, cases, by="op", run=Run(batch_size=batch_size, progress=False))
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


def cna_cases(model, tokenizer, cases, head, cache_dir=None, progress: bool = False) -> Comparison:
    """CNA between the model and the model with ``head`` zeroed, for every case's first answer token
    (the final norm of both frozen at the original model's statistics, as the authors do). With
    ``cache_dir`` the result is saved and a later call with the same model, head and cases loads it.
    The conditions are labelled "ori" and "inv" (the authors' names): ``c.top(k)`` has columns
    ``imp_ori``, ``imp_inv``, ``coef_ori``, ``coef_inv``."""
    (hl, hh), = parse_heads(model, [head])
    name = head_name(hl, hh)
    path = artefact_path(cache_dir, "cna", model, name, [list(c.prompt_ids) + [c.answer_ids[0]] for c in cases],
                         code=__name__)

    def compute() -> dict:
        # Below the head's layer both models have the same residual stream and coefficients at every
        # position, and both are scored with the original's final-norm statistics: their importance
        # scores are identical there (tested), so the intervened model is scored from layer hl on.
        c = compare(model, tokenizer, cases, condition=lambda: ablate_heads(model, [(hl, hh)]),
                    scoring=Scoring(same_below=hl), progress=progress, labels=("ori", "inv"))
        return replace(c, subject=name).record()
    return Comparison.from_record(load_or_compute(path, compute))


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
    res: Comparison

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
                  seed: int = 0, op: str = "+") -> Study:
    """The 1-digit cases of the study of ``op`` ("+": 1D+ and 1D-, "/": 1D/), the model's accuracy,
    the cases it answers (at most ``max_cases``, the showcase case always included), the head to
    compare against (``head``, else chapter 1's top head for ``op``, else the top head of a sweep over
    these cases) and the CNA of every analysed case (cached in ``cache_dir``, with a progress bar)."""
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
    res = cna_cases(model, tokenizer, correct, head, cache_dir=cache_dir, progress=True)
    return Study(cases, acc, correct, head, head_note, case, case_note, res)

