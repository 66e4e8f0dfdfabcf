"""Sentences of the chapters that state a finding, written from the run's numbers (never fixed text).

Each function takes the numbers a chapter measured and returns the sentence its page shows (via
``glue``); the tests render each on opposite inputs and check that the sentence changes with them.
A comparison of two measures says "above" or "below" only when their 95% intervals do not overlap.
"""
from __future__ import annotations

from cna_utils.measure.stats import Measure, proportion

__all__ = ["compare", "accuracy_by_op", "depth_order", "dag_average", "trend_words", "embedding_notes",
           "chain_stages", "convergence"]


def compare(a: Measure, b: Measure, words=("below", "about level with", "above")) -> str:
    """``words[0]`` when a's interval lies wholly below b's, ``words[2]`` when wholly above, else ``words[1]``."""
    if a.interval[1] < b.interval[0]:
        return words[0]
    if a.interval[0] > b.interval[1]:
        return words[2]
    return words[1]


def accuracy_by_op(correct: dict, paper: dict | None = None) -> str:
    """Chapter 2's opening: how often the model answers each operation's 1-digit cases, compared
    with each other (and with the paper's Llama-7B accuracy on the same template, ``paper`` {op: %}).
    ``correct``: {op: (cases right, cases)}."""
    ms = {op: proportion(k, n) for op, (k, n) in correct.items()}
    parts = [f"{op} {m.value:.1f}% [{m.interval[0]:.1f}, {m.interval[1]:.1f}] of {m.n}" for op, m in ms.items()]
    s = "The model answers the 1-digit cases of " + "; ".join(parts)
    if paper:
        s += " (Llama-7B on the same template: " + ", ".join(f"{op} {paper[op]:g}%" for op in ms if op in paper) + ")"
    ops = list(ms)
    if len(ops) == 2:
        word = compare(ms[ops[1]], ms[ops[0]], ("worse than", "about as well as (the intervals overlap)", "better than"))
        s += f": it answers {ops[1]} {word} {ops[0]}"
    return s + "."


def trend_words(first: float, last: float, tol: float = 0.0) -> str:
    return "larger" if first > last + tol else "smaller" if first < last - tol else "about the same"


def depth_order(shallow: float, deep: float, shallow_name: str, deep_name: str) -> str:
    """Chapter 5: what the structural point (a deep LoRA layer moves fewer neurons) says about this
    run's Table 10, whose top-10 increases are ``shallow`` and ``deep`` (%)."""
    if shallow != shallow or deep != deep:
        return (f"This run trains no LoRA model in layers {shallow_name if shallow != shallow else deep_name}, so "
                "Table 10 cannot show the order of the two groups.")
    if shallow > deep:
        return (f"Here the shallow group's top-10 increase ({shallow:+.1f}%, layers {shallow_name}) is larger than the "
                f"deep group's ({deep:+.1f}%, layers {deep_name}), the paper's order, and this structural limit is part "
                "of the reason.")
    return (f"Here the deep group's top-10 change ({deep:+.1f}%, layers {deep_name}) is not smaller than the shallow "
            f"group's ({shallow:+.1f}%, layers {shallow_name}), so the structural limit does not show in Table 10 on "
            "this model.")


def dag_average(mean99: Measure, paper99: float) -> str:
    """Chapter 3: what one case's strong edge says about the average over cases (Table 6's top-99)."""
    lo, hi = mean99.interval
    if lo > paper99:
        return (f"Over all cases the average is {mean99.value:.1f}% [{lo:.1f}, {hi:.1f}], above the paper's "
                f"{paper99:g}%: the lowest neuron feeds the other top neurons more on this model than on Llama-7B.")
    if hi < paper99:
        return (f"Over all cases the average is {mean99.value:.1f}% [{lo:.1f}, {hi:.1f}], below the paper's "
                f"{paper99:g}%: a strong edge in one case does not make a large average, most top neurons of a case "
                "are not fed by its root.")
    return (f"Over all cases the average is {mean99.value:.1f}% [{lo:.1f}, {hi:.1f}], which includes the paper's "
            f"{paper99:g}%.")


def embedding_notes(label: str, tied: bool, bos: bool) -> str:
    """Chapter 4: what the model's embeddings let Table 7 show. ``tied``: input and output embeddings
    are one matrix; ``bos``: the tokenizer opens the prompt with a beginning-of-sequence token."""
    if tied:
        notes = [f"{label} ties its input and output embeddings, so a word embedding projected to the vocabulary is "
                 "trivially its own token: word embeddings cannot be *hidden*-interpretable here (the \"origin\" "
                 "column of the embedding rows reads the operand itself)."]
    else:
        notes = [f"{label} has separate input and output embeddings (as Llama-7B), so a word embedding's own "
                 "projection need not read as its token."]
    if not bos:
        notes.append("Its tokenizer adds no beginning-of-sequence token, so the first token of the prompt is the "
                     "position models use as an attention sink, where a few shallow neurons have very large "
                     "coefficients; where that token is an operand they dominate a ranking by subvalue.")
    return " ".join(notes)


def chain_stages(case, operand_pos, shallow, head: str, drop10: float, root: str, deep: list[str],
                 prob: float) -> list[tuple[str, str]]:
    """Chapter 4's logic chain (the paper's Figure 1), one (stage, text) per box, from this run's
    numbers: ``shallow`` (Table 7's neuron rows: index = name, columns operand and attn_layer),
    ``drop10`` (% fall of the top-10 deep coefficients with ``head`` ablated), the PE-DAG ``root``
    and the ``deep`` neurons' lines, ``prob`` of the answer. A stage with nothing found says so."""
    if len(shallow):
        enhancing = "shallow FFN:\n" + "\n".join(f"{n} ({r.operand})" for n, r in shallow.iterrows())
        moving = ("attention layers\n" + ", ".join(str(int(x)) for x in sorted(set(shallow.attn_layer))) +
                  "\nmove them to the\nlast position")
    else:
        enhancing = "shallow FFN:\nnone on a path\nto the head"
        moving = f"no attention layer\nbelow head {head}"
    verb = "lowers" if drop10 < 0 else "raises"
    return [("input", f'"{case.prompt}"\noperands at\npositions {operand_pos}'),
            ("feature enhancing", enhancing),
            ("feature transferring", moving),
            ("feature predicting", f"head {head}\n{verb} the deep\nneurons' coefficients\n"
             f"(ablated: top-10\ncoef {-drop10:+.0f}%)"),
            ("prediction enhancing", f"PE-DAG rooted at\n{root}\n" + "\n".join(deep)),
            ("output", f'"{case.answer}"\np = {prob:.2f}')]


def convergence(falls: dict, window: int = 10, tol: float = 0.05) -> str:
    """Chapter 5: whether the LoRA runs had converged. ``falls``: {layer: relative fall of the mean
    loss over the last ``window`` steps against the ``window`` before (``lora.loss_still_falling``)}."""
    falling = {l: f for l, f in falls.items() if f == f and f > tol}
    if not falling:
        return (f"Every run's loss had levelled off: its mean over the last {window} steps is within "
                f"{100 * tol:g}% of the {window} steps before.")
    where = ", ".join(f"layer {l} ({100 * f:.0f}%)" for l, f in sorted(falling.items()))
    return (f"Training had not converged in {len(falling)} of {len(falls)} runs: the mean loss of the last {window} "
            f"steps is still more than {100 * tol:g}% below the {window} steps before in {where}. Longer training "
            "(the paper's 4 epochs of 18,000 sentences) would move these models further, so their accuracies and "
            "coefficient changes are those of runs stopped early.")

