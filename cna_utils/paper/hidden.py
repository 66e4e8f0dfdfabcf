"""What zeroing a set of FFN neurons costs, and the zero-shot search's Table 8 (paper Section 4.4).

Usage::

    accuracy_decrease(model, tok, cases, [(3, 17), (5, 2)])        # % of the first-token accuracy lost
    zero_shot_table(model, tok, cases, hid, random_draws=5)         # Table 8 with its random control
"""
from __future__ import annotations

import pandas as pd
import torch

from cna_utils.measure.evaluate import accuracy, relative_decrease
from cna_utils.measure.interventions import mask_neurons

__all__ = ["accuracy_decrease", "masked_correct", "matched_threshold", "zero_shot_table"]


def masked_correct(model, tokenizer, cases, neurons):
    """Per case: is the first answer token still the argmax with ``neurons`` zeroed? (numpy bool array)"""
    if isinstance(neurons, pd.DataFrame):
        neurons = list(zip(neurons.layer, neurons.neuron))
    with mask_neurons(model, list(neurons)):
        return accuracy(model, tokenizer, cases).first_correct.to_numpy(dtype=bool)


def accuracy_decrease(model, tokenizer, cases, neurons, base: float | None = None) -> float:
    """The paper's relative decrease (%) of first-token accuracy on ``cases`` when ``neurons``
    ([(layer, neuron), ...] or a frame with ``layer`` and ``neuron`` columns) are zeroed.
    ``base``: the accuracy without the edit (computed when not given)."""
    if isinstance(neurons, pd.DataFrame):
        neurons = list(zip(neurons.layer, neurons.neuron))
    if base is None:
        base = accuracy(model, tokenizer, cases).first_correct.mean()
    if base == 0:
        raise ValueError("the model answers none of these cases: a relative decrease is undefined")
    with mask_neurons(model, list(neurons)):
        return float(relative_decrease(base, accuracy(model, tokenizer, cases).first_correct.mean()))


def matched_threshold(hid: pd.DataFrame, share: float) -> int:
    """The smallest threshold M whose selected neurons (``concepts > M``, as ``zero_shot_table``) are at
    most ``share`` % of the searched shallow neurons: the paper's M = 2 selects 1.1% of Llama-7B's, and
    a smaller model selects far more at the same M."""
    counts = hid.concepts.to_numpy()
    M = 0
    while 100 * (counts > M).mean() > share:
        M += 1
    return M


def zero_shot_table(model, tokenizer, cases, hid: pd.DataFrame, random_draws: int = 5, seed: int = 0,
                    thresholds=range(4)) -> pd.DataFrame:
    """Table 8: for each threshold M, the shallow neurons of ``hid`` (``hidden_interpretable``'s
    frame) with more than M concepts after the attention transforms, their number and the accuracy
    decrease when they are zeroed on ``cases``; the mean decrease of ``random_draws`` random sets of
    the same size (a generator seeded with ``seed``, drawn in order); the same for the reading with
    the attention layers above the neuron only; how many of them are interpretable before any
    transform too; and their share of the shallow neurons. One column per M."""
    base_correct = accuracy(model, tokenizer, cases).first_correct.to_numpy(dtype=bool)
    base = base_correct.mean()
    if base == 0:
        raise ValueError("the model answers none of these cases: a relative decrease is undefined")
    dec = lambda correct: float(relative_decrease(base, correct.mean()))
    gen = torch.Generator().manual_seed(seed)
    n = len(hid)
    rows, per_case = {}, {"base": base_correct.tolist()}
    for M in thresholds:
        chosen, above = hid[hid.concepts > M], hid[hid.concepts_above > M]
        rand = [masked_correct(model, tokenizer, cases, hid.iloc[torch.randperm(n, generator=gen)[:len(chosen)].tolist()])
                for _ in range(random_draws)]
        got = masked_correct(model, tokenizer, cases, chosen)
        per_case[M] = {"chosen": got.tolist(), "random": [r.tolist() for r in rand]}
        rows[f"M={M}"] = {"number": len(chosen), "accuracy_decrease": dec(got),
                          "random_decrease": sum(map(dec, rand)) / len(rand) if rand else float("nan"),
                          "number, attention above only": len(above),
                          "accuracy_decrease, attention above only": accuracy_decrease(model, tokenizer, cases, above,
                                                                                       base),
                          "raw_also_interpretable": int((chosen.concepts_raw > M).sum()),
                          "share_of_shallow_neurons": 100 * len(chosen) / n}
    table = pd.DataFrame(rows)
    table.attrs["per_case"] = per_case
    return table
