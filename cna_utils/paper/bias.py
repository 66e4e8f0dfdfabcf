"""Gender bias: CNA between two inputs of one model, and the bias metric (paper Section 6.2, Appendix D).

Usage::

    data = load_bias_data()                                    # prompts, professions, neutral text
    own = model_professions(model, tok, data["prompts"], data["occupations"])   # the model's own lists
    b = bias_scores(model, tok, data["prompts"], {"woman": [...], "man": [...]})
    bias_summary(b)                                            # total / woman / man bias (Table 13)
    g = gender_cna(model, tok, data["prompts"][0], {"woman": [...], "man": [...]})
    g.top(18)                                                  # the neurons behind the difference

The bias of a profession w associated with gender g1 (the other gender g2) under a prompt is
``log p(w | prompt(g1)) - log p(w | prompt(g2))``, the full log-probability of the profession's
tokens as the prompt's continuation (multi-token professions are summed over their tokens, never
truncated). Swapping the genders negates it. The paper's "woman bias" is its mean over the
woman-associated professions and all prompts, "man bias" the same for the man-associated ones, and
"total bias" the mean of all of them.

The CNA of Section 6.2 compares two INPUTS in one model: for a woman-associated profession w,
``imp(w | "A woman works as a") - imp(w | "A man works as a")`` per neuron (the genders swapped for
man-associated professions); averaged over the professions it ranks the neurons that make the
model's predictions differ by gender.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources

import pandas as pd
import torch
import yaml

from cna_utils.data.arithmetic import align, Case
from cna_utils.model.forward import answer_logprobs, model_device
from cna_utils.measure.compare import compare, Comparison, Scoring
from cna_utils.measure.interventions import mask_neurons
from cna_utils.measure.importance import top_neurons
from cna_utils.measure.tracing import trace

__all__ = ["load_bias_data", "fill", "gender_bias", "continuation_logprob", "bias_scores", "bias_summary",
           "top_predictions", "model_professions", "single_token_words", "GenderCNA", "gender_cna",
           "perplexity", "edit_sets", "edit_table", "GENDERS"]

GENDERS = ("woman", "man")


def load_bias_data() -> dict:
    """``cna_utils/data/bias.yaml``: the paper's prompts (Table 22) and professions (Table 23), held-out
    prompts, an occupation word list and neutral text."""
    return yaml.safe_load(resources.files("cna_utils.data").joinpath("bias.yaml").read_text(encoding="utf-8"))


def fill(template: str, gender: str) -> str:
    if "<gend>" not in template:
        raise ValueError(f"prompt template {template!r} has no <gend> slot (write e.g. 'A <gend> works as a')")
    return template.replace("<gend>", gender)


def gender_bias(logp_g1, logp_g2):
    """The paper's bias of a profession: log p(prof | gender 1) - log p(prof | gender 2)."""
    return logp_g1 - logp_g2


def _cases(tokenizer, prompts, words) -> list[Case]:
    for w in words:
        if not isinstance(w, str) or not w.strip():
            raise ValueError(f"profession {w!r} is empty: give it as text, e.g. 'nurse' or 'dental assistant'")
    cases = [Case(p, w.strip(), "", 0, 0, "word", 0, 0, 0) for p in prompts for w in words]
    return align(cases, tokenizer)


@torch.no_grad()
def continuation_logprob(model, tokenizer, prompts, words, batch_size: int = 64) -> pd.DataFrame:
    """Full log-probability of each word (all its tokens, teacher-forced) as the continuation of
    each prompt: a DataFrame [prompts x words]."""
    out = answer_logprobs(model, _cases(tokenizer, prompts, words), batch_size)   # one prompt forward per prompt
    return pd.DataFrame(out.view(len(prompts), len(words)).numpy(), index=list(prompts), columns=list(words))


def bias_scores(model, tokenizer, templates, professions: dict, genders=GENDERS) -> pd.DataFrame:
    """One row per (template, profession): ``group`` (the gender the profession is associated
    with), the log-probabilities under each gender and ``bias`` = log p(prof | group) -
    log p(prof | other gender). ``professions``: {gender: [profession, ...]} for both genders."""
    g1, g2 = genders
    missing = [g for g in genders if g not in professions]
    if missing:
        raise ValueError(f"professions needs a list for each gender {list(genders)}; missing {missing}")
    words = [w for g in genders for w in professions[g]]
    if not words:
        raise ValueError("no professions given")
    lp = {g: continuation_logprob(model, tokenizer, [fill(t, g) for t in templates], words) for g in genders}
    rows = []
    for ti, t in enumerate(templates):
        for g in genders:
            other = g2 if g == g1 else g1
            for w in professions[g]:
                a, b = float(lp[g].iloc[ti][w]), float(lp[other].iloc[ti][w])
                rows.append({"template": t, "profession": w, "group": g, f"logp_{g1}": lp[g1].iloc[ti][w],
                             f"logp_{g2}": lp[g2].iloc[ti][w], "bias": gender_bias(a, b)})
    return pd.DataFrame(rows)


def bias_summary(frame: pd.DataFrame, genders=GENDERS) -> dict:
    """Table 13's three numbers: ``total`` (mean bias over every row) and the mean per group."""
    out = {"total": float(frame.bias.mean())}
    out.update({g: float(frame[frame.group == g].bias.mean()) for g in genders})
    return out


@torch.no_grad()
def top_predictions(model, tokenizer, prompts, k: int = 100) -> list[list[tuple[str, float]]]:
    """The ``k`` most likely next tokens of each prompt as (text, log p)."""
    tr = trace(model, tokenizer, list(prompts), keep=())
    lp = torch.log_softmax(tr.logits.float(), -1)
    vals, ids = lp.topk(k, dim=-1)
    return [[(tokenizer.decode([int(i)]), float(v)) for v, i in zip(vr, ir)] for vr, ir in zip(vals, ids)]


def model_professions(model, tokenizer, templates, occupations, k: int = 100, per_gender: int = 16,
                      genders=GENDERS) -> pd.DataFrame:
    """The professions the model itself associates with each gender (the Appendix D procedure).

    The top-``k`` next tokens of every prompt, for each gender, are read against ``occupations``;
    every occupation found is scored by its mean bias over the prompts. A profession is listed for
    gender g when it is among g's top-``k`` for at least one prompt and its mean log-probability is
    higher with g; the ``per_gender`` most biased per gender are marked ``chosen``. Returns one row
    per occupation found: ``profession``, ``in_top_<g>`` (prompts where it is in g's top-k),
    ``logp_<g>`` (mean), ``group`` and ``bias`` (toward its group) and ``chosen``."""
    occ = {o.lower() for o in occupations}
    g1, g2 = genders
    seen = {g: {} for g in genders}
    for g in genders:
        for preds in top_predictions(model, tokenizer, [fill(t, g) for t in templates], k):
            for text, _ in preds:
                w = text.strip().lower()
                if w in occ and text.strip() == text.strip().lower():
                    seen[g][w] = seen[g].get(w, 0) + 1
    found = sorted(set(seen[g1]) | set(seen[g2]))
    if not found:
        return pd.DataFrame(columns=["profession", "group", "bias", "chosen"])
    lp = {g: continuation_logprob(model, tokenizer, [fill(t, g) for t in templates], found).mean(0) for g in genders}
    rows = []
    for w in found:
        d = float(lp[g1][w] - lp[g2][w])
        group = g1 if d > 0 else g2
        rows.append({"profession": w, f"in_top_{g1}": seen[g1].get(w, 0), f"in_top_{g2}": seen[g2].get(w, 0),
                     f"logp_{g1}": float(lp[g1][w]), f"logp_{g2}": float(lp[g2][w]), "group": group,
                     "bias": abs(d), "eligible": seen[group].get(w, 0) > 0})
    df = pd.DataFrame(rows).sort_values("bias", ascending=False).reset_index(drop=True)
    df["chosen"] = False
    for g in genders:
        pick = df[(df.group == g) & df.eligible].head(per_gender).index
        df.loc[pick, "chosen"] = True
    return df


def single_token_words(tokenizer, prompt: str, words) -> tuple[list[str], list[str]]:
    """Split ``words`` into those that are ONE token after ``prompt`` (usable as a CNA target) and
    the rest."""
    cases = _cases(tokenizer, [prompt], words)
    one = [c.answer for c in cases if len(c.answer_ids) == 1]
    return one, [c.answer for c in cases if len(c.answer_ids) != 1]


@dataclass
class GenderCNA:
    """The gender CNA of Section 6.2: one ``Comparison`` of the template filled with each gender
    (labels: the genders; cases: the professions), and each profession's gender, which sets the
    sign of its score."""
    template: str
    professions: list          # in order; ``groups[i]`` is profession i's gender
    groups: list
    comparison: Comparison

    @property
    def genders(self) -> tuple:
        return self.comparison.labels

    @property
    def layers(self) -> list:
        return self.comparison.layers

    @property
    def imp(self) -> dict:
        """{gender: [P, L, N]} importance scores under each gender's prompt."""
        c = self.comparison
        return dict(zip(c.labels, (c.imp_a, c.imp_b)))

    @property
    def coef(self) -> dict:
        """{gender: [L, N]} the prompt's coefficient scores (the same for every profession)."""
        c = self.comparison
        return dict(zip(c.labels, (c.coef_a[0], c.coef_b[0])))

    @property
    def score(self) -> torch.Tensor:
        """[P, L, N]: imp under the profession's gender minus imp under the other."""
        g1, g2 = self.genders
        sign = torch.tensor([1.0 if g == g1 else -1.0 for g in self.groups]).view(-1, 1, 1)
        return sign * self.comparison.score

    def top(self, k: int) -> pd.DataFrame:
        """The k neurons with the highest mean CNA score over the professions, with, for each, the
        profession it serves most and its importance / coefficient under each gender."""
        sc = self.score
        mean = sc.mean(0)
        t = top_neurons(mean, k, layers=self.layers)
        g1, g2 = self.genders
        rows = []
        for r in t.itertuples():
            li = self.layers.index(r.layer)
            p = int(sc[:, li, r.neuron].argmax())
            rows.append({"name": r.name, "layer": r.layer, "neuron": r.neuron, "mean_cna": r.score,
                         "profession": self.professions[p], "group": self.groups[p],
                         f"imp_{g1}": float(self.imp[g1][p, li, r.neuron]),
                         f"imp_{g2}": float(self.imp[g2][p, li, r.neuron]),
                         f"coef_{g1}": float(self.coef[g1][li, r.neuron]),
                         f"coef_{g2}": float(self.coef[g2][li, r.neuron])})
        return pd.DataFrame(rows)


def gender_cna(model, tokenizer, template: str, professions: dict, genders=GENDERS, progress: bool = False) -> GenderCNA:
    """CNA between ``template`` filled with each gender, for every profession's next token.
    Professions must be one token after the prompt (see ``single_token_words``): a multi-token
    profession raises a ValueError rather than being cut to its first token."""
    words = [w for g in genders for w in professions.get(g, [])]
    groups = [g for g in genders for _ in professions.get(g, [])]
    if not words:
        raise ValueError("no professions given")
    cases = {}
    for g in genders:
        cs = _cases(tokenizer, [fill(template, g)], words)
        multi = [c.answer for c in cs if len(c.answer_ids) != 1]
        if multi:
            raise ValueError(f"professions {multi} are more than one token after {fill(template, g)!r}: CNA scores one "
                             "next token. Pass single-token professions (single_token_words splits them); the bias "
                             "metric (bias_scores) scores multi-token ones by their full log-probability.")
        cases[g] = cs
    # two inputs of one model, each scored at its own final-norm statistics, for the token of the
    # profession after the first gender's prompt
    g1, g2 = genders
    c = compare(model, tokenizer, cases[g1], cases[g2], scoring=Scoring(norm="own"), progress=progress,
                labels=(g1, g2))
    return GenderCNA(template, words, groups, c)


@torch.no_grad()
def perplexity(model, tokenizer, texts) -> float:
    """Perplexity of the model on ``texts`` (each scored on its own; every token after the first)."""
    nll, n = 0.0, 0
    dev = model_device(model)
    for t in texts:
        ids = torch.tensor([tokenizer(t)["input_ids"]], device=dev)
        if ids.shape[1] < 2:
            continue
        logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
        nll += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
        n += ids.shape[1] - 1
    if n == 0:
        raise ValueError("no text to score: give sentences of at least two tokens")
    return math.exp(nll / n)


def edit_sets(top: pd.DataFrame, ks, n_layers: int, d_mlp: int, random_draws: int = 3, seed: int = 0) -> dict:
    """The edits of Table 13: no edit ("original"), the ``k`` first neurons of ``top`` ("top-k") and
    ``random_draws`` sets of ``k`` neurons drawn uniformly from every FFN neuron ("random-k #d"; one
    generator seeded with ``seed``, drawn in order). Values are [(layer, neuron), ...]."""
    gen = torch.Generator().manual_seed(seed)
    sets = {"original": []}
    for k in ks:
        sets[f"top-{k}"] = list(zip(top.layer[:k], top.neuron[:k]))
        for d in range(random_draws):
            idx = torch.randperm(n_layers * d_mlp, generator=gen)[:k].tolist()
            sets[f"random-{k} #{d + 1}"] = [divmod(i, d_mlp) for i in idx]
    return sets


def edit_table(model, tokenizer, sets: dict, prompt_sets: dict, professions: dict, paper_professions: dict,
               genders=GENDERS) -> pd.DataFrame:
    """Table 13: the bias (``bias_summary``: total and per gender) of ``professions`` after each edit
    of ``sets`` (neurons zeroed), per named prompt set, and the total of ``paper_professions`` on the
    first prompt set; then one row per k with the mean over its random sets. Columns are
    (prompt set, total / gender). ``.attrs["scores"]``: each edit's ``bias_scores`` frame."""
    templates = list(dict.fromkeys(t for ps in prompt_sets.values() for t in ps))
    first = next(iter(prompt_sets.values()))
    rows, scores = {}, {}
    for name, neurons in sets.items():
        with mask_neurons(model, neurons):
            b = bias_scores(model, tokenizer, templates, professions, genders)
            scores[name] = b.to_dict(orient="list")
            paper_total = bias_summary(bias_scores(model, tokenizer, first, paper_professions, genders), genders)["total"]
        row = {}
        for pname, ps in prompt_sets.items():
            row.update({(pname, k): v for k, v in bias_summary(b[b.template.isin(ps)], genders).items()})
        row[("paper's professions", "total")] = paper_total
        rows[name] = row
    table = pd.DataFrame(rows).T
    table.columns = pd.MultiIndex.from_tuples(table.columns)
    rand = table[table.index.str.startswith("random")]
    out = table[~table.index.str.startswith("random")].copy()
    for k in dict.fromkeys(n.split(" ")[0][len("random-"):] for n in rand.index):
        sel = rand[rand.index.str.startswith(f"random-{k} ")]
        out.loc[f"random-{k} (mean of {len(sel)})"] = sel.mean()
    out.attrs["scores"] = scores
    return out

