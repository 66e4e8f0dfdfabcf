"""Comparative Neuron Analysis of two conditions: the one comparison every chapter uses.

Usage::

    c = compare(model, tok, cases, condition=lambda: ablate_heads(model, ["17_22"]), scoring=Scoring(same_below=17),
                labels=("ori", "inv"))
    c.score                            # imp_a - imp_b: [cases, layers, neurons]
    c.top(10)                          # the top CNA neurons, with imp_ori, imp_inv, coef_ori, coef_inv
    compare(model, tok, cases, condition=lambda: lora_applied(model, run), scoring=Scoring(target="prediction"))
    compare(model, tok, woman_cases, man_cases, scoring=Scoring(norm="own"))     # two inputs, one model

Condition a is the model as it is on ``cases_a``; condition b is ``cases_b`` (default: the same
cases) traced inside ``condition()``, any context manager that changes the model (a head
ablation, a LoRA adapter, a neuron mask) or nothing. Every neuron's importance score (the exact
definition, ``importance_scores``) is computed at the last position for the same target token in
both: the first gold answer token of ``cases_a`` (``target="gold"``) or condition a's top-1
prediction (``target="prediction"``, the authors' choice); ``Scoring`` holds these choices. ``norm="a"`` freezes both conditions'
final norm at condition a's statistics (the authors' CNA code); ``norm="own"`` scores each at its
own. Below ``same_below`` both conditions compute the same residual stream and coefficients (an
intervention at that layer cannot reach lower ones), so with ``norm="a"`` their scores there are
equal (tested) and are computed once.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import pandas as pd
import torch

from cna_utils.measure.importance import cna, importance_scores, top_neurons
from cna_utils.measure.tracing import Trace, trace

__all__ = ["Scoring", "Comparison", "compare"]


@dataclass(frozen=True)
class Scoring:
    """How ``compare`` scores the two conditions (see the module docstring): the ``target`` token
    ("gold" or "prediction"), the final ``norm`` ("a" or "own"), the ``layers`` to score (None:
    all) and ``same_below``, the layer under which both conditions are known to agree."""
    target: str = "gold"
    norm: str = "a"
    layers: object = None
    same_below: int = 0

    def __post_init__(self):
        if self.target not in ("gold", "prediction"):
            raise ValueError(f"target must be 'gold' (the first answer token) or 'prediction' (condition a's top-1), "
                             f"got {self.target!r}")
        if self.norm not in ("a", "own"):
            raise ValueError(f"norm must be 'a' (both at condition a's final-norm statistics, the authors' choice) "
                             f"or 'own', got {self.norm!r}")
        if self.same_below and self.norm != "a":
            raise ValueError("same_below needs norm='a': at their own final-norm statistics the two conditions' "
                             "scores differ even where their residual streams agree")


@dataclass
class Comparison:
    """Scores of every neuron at the last position under conditions a and b: tensors [cases, layers,
    neurons]. ``labels`` name the two conditions in tables and attributes (``("ori", "inv")`` for a
    head's CNA, ``("lora", "ori")`` for LoRA's): ``top`` writes columns ``imp_<label>`` and
    ``coef_<label>``, and ``c.imp_ori`` is ``c.imp_a`` when ``labels[0] == "ori"``. ``subject``
    names what was compared (a head, an adapter), for the reader."""
    layers: list
    targets: list
    imp_a: torch.Tensor
    imp_b: torch.Tensor
    coef_a: torch.Tensor
    coef_b: torch.Tensor
    seconds: float
    traces: tuple = field(default=(), repr=False)      # (trace a, trace b), for logits and norms
    labels: tuple = ("a", "b")
    subject: str = ""

    def __getattr__(self, name: str):
        quantity, _, label = name.partition("_")
        labels = self.__dict__.get("labels", ())
        if quantity in ("imp", "coef") and label in labels and label not in ("a", "b"):
            return getattr(self, f"{quantity}_{'ab'[labels.index(label)]}")
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    @property
    def score(self) -> torch.Tensor:
        """The CNA score, ``imp_a - imp_b``."""
        return cna(self.imp_a, self.imp_b)

    def top(self, k: int, case: int | None = None) -> pd.DataFrame:
        """Top-k neurons by CNA score per case (one case with ``case=i``), with all four scores."""
        la, lb = self.labels
        cols = {f"imp_{la}": self.imp_a, f"imp_{lb}": self.imp_b, f"coef_{la}": self.coef_a, f"coef_{lb}": self.coef_b}
        if case is None:
            return top_neurons(self.score, k, layers=self.layers, **cols)
        t = top_neurons(self.score[case], k, layers=self.layers, **{n: v[case] for n, v in cols.items()})
        t["case"] = case
        return t

    def swapped(self) -> "Comparison":
        """The same comparison with conditions a and b exchanged (the score changes sign)."""
        return Comparison(self.layers, self.targets, self.imp_b, self.imp_a, self.coef_b, self.coef_a, self.seconds,
                          self.traces[::-1], self.labels[::-1], self.subject)

    def record(self) -> dict:
        """Everything but the traces, for a cache file (``from_record`` reads it back)."""
        return {k: v for k, v in self.__dict__.items() if k != "traces"}

    @classmethod
    def from_record(cls, d: dict) -> "Comparison":
        """A ``record``, or a head CNA cached before the conditions had labels (keys ``head``,
        ``imp_ori``, ``imp_inv``, ``coef_ori``, ``coef_inv``)."""
        if "imp_ori" in d:
            return cls(d["layers"], d["targets"], d["imp_ori"], d["imp_inv"], d["coef_ori"], d["coef_inv"],
                       d["seconds"], labels=("ori", "inv"), subject=d["head"])
        return cls(**d)


def compare(model, tokenizer, cases_a, cases_b=None, condition=None, scoring: Scoring = Scoring(),
            progress: bool = False, labels=("a", "b")) -> Comparison:
    """CNA between condition a (``cases_a``, the model as it is) and condition b (``cases_b`` or the
    same cases, inside ``condition()``); see the module docstring."""
    target, layers, norm, same_below = scoring.target, scoring.layers, scoring.norm, scoring.same_below
    cases_b = cases_a if cases_b is None else cases_b
    if len(cases_b) != len(cases_a):
        raise ValueError(f"{len(cases_a)} cases in condition a but {len(cases_b)} in condition b")
    t0 = time.time()
    keep = ("resid_mid", "coef")
    tr_a = trace(model, tokenizer, cases_a, layers=layers, keep=keep)
    with condition() if condition is not None else nullcontext():
        tr_b = trace(model, tokenizer, cases_b, layers=layers, keep=keep)
    targets = tr_a.logits.argmax(-1).tolist() if target == "prediction" else [c.answer_ids[0] for c in cases_a]
    imp_a, imp_b = _scores(model, tr_a, tr_b, targets, norm, same_below, progress)
    return Comparison(list(tr_a.layers), targets, imp_a, imp_b, tr_a.coef, tr_b.coef, time.time() - t0, (tr_a, tr_b),
                      tuple(labels))


def _scores(model, tr_a: Trace, tr_b: Trace, targets, norm: str, same_below: int, progress: bool):
    high = [l for l in tr_a.layers if l >= same_below]
    low = [l for l in tr_a.layers if l < same_below]
    imp_a, imp_b = importance_scores(model, [tr_a, tr_b], targets, layers=high, shared_norm=norm == "a",
                                     progress=progress) if high else (None, None)
    if not low:
        return imp_a, imp_b
    below = importance_scores(model, tr_a, targets, layers=low, progress=progress)
    if imp_a is None:
        return below, below.clone()
    return torch.cat([below, imp_a], dim=1), torch.cat([below, imp_b], dim=1)
