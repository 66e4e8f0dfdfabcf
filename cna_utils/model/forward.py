"""Batched, left-padded forwards that score answer tokens; starting a forward at any layer.

Usage::

    batch = encode(tok, cases)                       # prompt + answer[:-1], left padded
    logits = answer_logits(model, batch)             # [B, S, vocab] at the S answer slots
    s = score(logits, batch.targets)                 # first-token / full-answer correctness, log-probs

Conventions. Sequences are padded on the LEFT so every case's answer slots are the last S
positions; ``position_ids`` count real tokens only (so absolute-position models see the same
positions as an unpadded run). Teacher forcing: the model reads prompt + answer[:-1] and slot j
predicts answer token j.
"""
from __future__ import annotations

import copy
import os
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
from torch import nn

from cna_utils.model.hooks import attached, post
from cna_utils.model.families import base_model, family, layers, submodule, unembed

__all__ = ["Run", "Batch", "length_batches", "encode", "hidden_at_answers", "answer_logits", "score", "start_at_layer", "model_device",
           "answer_logprobs"]


@dataclass(frozen=True)
class Run:
    """How a long measurement runs, never what it measures (its numbers do not depend on any field):
    ``cache_dir`` (each finished unit is saved there and a rerun loads it), ``progress`` (a progress
    bar), and how cases are packed into forwards: ``batch_size`` cases per forward,
    ``rows_per_forward`` replica rows (cases x heads) per forward and ``min_rows`` (below it, the head
    sweep lets consecutive layers share a forward; 0: never). A field left None takes the default of the
    function it is given to (``filled``)."""
    cache_dir: str | os.PathLike | None = None
    progress: bool = True
    batch_size: int | None = None
    rows_per_forward: int | None = None
    min_rows: int | None = None

    def filled(self, **defaults) -> "Run":
        """This run with its None packing fields set from ``defaults`` (and each checked positive)."""
        run = replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})
        for name, least in (("batch_size", 1), ("rows_per_forward", 1), ("min_rows", 0)):
            v = getattr(run, name)
            if v is not None and int(v) < least:
                raise ValueError(f"Run.{name} must be at least {least} rows, got {v!r}")
        return run

    def at(self, sub: str | None) -> "Run":
        """The same run with its cache in the subfolder ``sub`` of ``cache_dir`` (none without one)."""
        return replace(self, cache_dir=None if self.cache_dir is None or sub is None else
                       os.path.join(self.cache_dir, sub))


def model_device(model) -> torch.device:
    return next(model.parameters()).device


@dataclass
class Batch:
    """Tensors of one left-padded batch.

    input_ids, attention_mask, position_ids: [B, T]; targets: [B, S] gold answer ids right-aligned
    in the last S slots (-1 where a case has fewer answer tokens); n_answer: [B]."""
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    targets: torch.Tensor
    n_answer: torch.Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def repeat(self, k: int) -> "Batch":
        """k copies stacked replica-major: row r*B + i is case i of replica r."""
        return Batch(*(t.repeat(k, *([1] * (t.dim() - 1))) for t in
                       (self.input_ids, self.attention_mask, self.position_ids, self.targets, self.n_answer)))


def length_batches(cases, batch_size: int) -> list[list[int]]:
    """Case indices grouped into batches of similar sequence length (less padding per forward)."""
    order = sorted(range(len(cases)), key=lambda i: len(cases[i].prompt_ids) + len(cases[i].answer_ids))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def _pad_id(tokenizer) -> int:
    if tokenizer is None:
        return 0
    pid = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return int(pid or 0)


def encode(tokenizer, cases, device=None) -> Batch:
    """Left-pad aligned cases (see ``data.align``) into one ``Batch``.

    Accepts ``Case`` objects or plain lists of token ids (then nothing is scored: S=1, target -1)."""
    if len(cases) == 0:
        raise ValueError("no cases given: pass a non-empty list of cases")
    seqs, answers = [], []
    for c in cases:
        if isinstance(c, (list, tuple)):
            seqs.append(list(c))
            answers.append([])
            continue
        if not c.answer_ids:
            raise ValueError(f"case {c.prompt!r} is not aligned to a tokenizer: call align(cases, tokenizer)")
        seqs.append(list(c.prompt_ids) + list(c.answer_ids[:-1]))
        answers.append(list(c.answer_ids))
    T = max(len(s) for s in seqs)
    S = max(1, max(len(a) for a in answers))
    B = len(seqs)
    ids = torch.full((B, T), _pad_id(tokenizer), dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    targets = torch.full((B, S), -1, dtype=torch.long)
    for i, (s, a) in enumerate(zip(seqs, answers)):
        ids[i, T - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, T - len(s):] = 1
        if a:
            targets[i, S - len(a):] = torch.tensor(a, dtype=torch.long)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    n_ans = torch.tensor([len(a) for a in answers], dtype=torch.long)
    batch = Batch(ids, mask, pos, targets, n_ans)
    if device is not None:
        batch = Batch(*(t.to(device) for t in (ids, mask, pos, targets, n_ans)))
    return batch


@contextmanager
def start_at_layer(model, layer: int):
    """Within the block, ``base_model(model)(inputs_embeds=x^{layer-1}, ...)`` runs layers
    ``layer..L-1`` only (plus the final norm): the decoder list is temporarily cut, learned
    position embeddings are silenced (x already contains them). Restored on exit."""
    fam = family(model)
    parent_path, _, attr = fam.layers.rpartition(".")
    parent = submodule(model, parent_path)
    full = layers(model)
    cfg = model.config
    layer_types = getattr(cfg, "layer_types", None)
    if fam.position_embedding is not None and layer == 0:
        raise ValueError("start_at_layer(model, 0) needs token ids, not a residual: run the model normally")
    # the residual given already holds the position embedding: the embedding layer adds none again
    zero_pos = [] if fam.position_embedding is None else \
        [post(submodule(model, fam.position_embedding), lambda m, i, o: torch.zeros_like(o))]
    setattr(parent, attr, nn.ModuleList(list(full)[layer:]))
    try:
        if layer_types is not None:
            cfg.layer_types = list(layer_types)[layer:]
        with attached(zero_pos):
            yield
    finally:
        setattr(parent, attr, full)
        if layer_types is not None:
            cfg.layer_types = layer_types


def hidden_at_answers(model, batch: Batch, start_layer: int = 0, resid: torch.Tensor | None = None) -> torch.Tensor:
    """Final-normed hidden states at the answer slots: [B, S, d_model].

    With ``start_layer > 0``, ``resid`` is x^{start_layer-1} for all positions ([B, T, d_model]) and
    only the layers from ``start_layer`` on are run."""
    S = batch.targets.shape[1]
    kw = dict(attention_mask=batch.attention_mask, position_ids=batch.position_ids, use_cache=False)
    if start_layer == 0:
        h = base_model(model)(input_ids=batch.input_ids, **kw).last_hidden_state
    else:
        with start_at_layer(model, start_layer):
            h = base_model(model)(inputs_embeds=resid, **kw).last_hidden_state
    return h[:, -S:]


def answer_logits(model, batch: Batch, start_layer: int = 0, resid: torch.Tensor | None = None) -> torch.Tensor:
    """Logits at the answer slots only: [B, S, vocab] (the LM head is applied to S positions, not T).

    The LM head gets a 2-D input: on CPU a 3-D input whose weight does not require grad takes a
    batched-matmul path that is ~10x slower than one matmul."""
    h = hidden_at_answers(model, batch, start_layer, resid)
    return unembed(model)(h.reshape(-1, h.shape[-1])).view(*h.shape[:-1], -1)


@torch.no_grad()
def score(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Score answer slots. logits: [B, S, V]; targets: [B, S] (-1 = no token).

    Returns (all on CPU): ``first_correct`` [B] bool (argmax == first answer token),
    ``answer_correct`` [B] bool (every answer token is the argmax, teacher-forced),
    ``gold_logprob`` [B] float (log p of the first answer token; larger = more confident),
    ``token_correct`` [B, S] bool (False where target is -1), ``pred`` [B] first-slot argmax id,
    ``token_logprob`` [B, S] float (log p of each answer token; 0 where target is -1, so a row's
    sum is the whole answer's log-probability)."""
    logits = logits.float()
    valid = targets >= 0
    safe = targets.clamp(min=0)
    lse = torch.logsumexp(logits, dim=-1)                                  # [B, S]
    gold = logits.gather(-1, safe.unsqueeze(-1)).squeeze(-1) - lse         # [B, S]
    pred = logits.argmax(-1)                                               # [B, S]
    tok_ok = (pred == safe) & valid
    first = valid.long().argmax(-1)                                        # first valid slot per row
    rows = torch.arange(len(targets), device=targets.device)
    return dict(first_correct=tok_ok[rows, first].cpu(), answer_correct=(tok_ok | ~valid).all(-1).cpu(),
                gold_logprob=gold[rows, first].cpu(), token_correct=tok_ok.cpu(), pred=pred[rows, first].cpu(),
                token_logprob=(gold * valid).cpu())


@torch.no_grad()
def answer_logprobs(model, cases, batch_size: int = 64) -> torch.Tensor:
    """The full log-probability of each aligned case's answer (every answer token, teacher-forced): [cases].

    Cases with the same prompt ids run their prompt once; its key/value cache then serves a batch
    of their answers (chapter 7 asks 32 professions after each prompt: about 7x fewer tokens than
    one padded sequence per case, with the same numbers up to float rounding, tested on every family)."""
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(cases):
        if not c.answer_ids:
            raise ValueError(f"case {c.prompt!r} is not aligned to a tokenizer: call align(cases, tokenizer)")
        groups.setdefault(tuple(c.prompt_ids), []).append(i)
    dev, base, head = model_device(model), base_model(model), unembed(model)
    out = torch.empty(len(cases))
    for prompt, idx in groups.items():
        # answers batched in a fixed order (by their ids), so a case's number does not depend on the
        # order the cases were given in (row positions change float rounding in a batched matmul)
        idx = sorted(idx, key=lambda i: list(cases[i].answer_ids))
        P = len(prompt)
        pre = base(input_ids=torch.tensor([prompt], device=dev), use_cache=True)
        first = torch.log_softmax(head(pre.last_hidden_state[:, -1]).float(), -1)[0].cpu()
        for j in range(0, len(idx), batch_size):
            rows = idx[j:j + batch_size]
            answers = [list(cases[i].answer_ids) for i in rows]
            total = torch.tensor([float(first[a[0]]) for a in answers])
            S = max(len(a) for a in answers) - 1
            if S > 0:                       # answer tokens 1.. read the prompt's cache and answer[:-1]
                ids = torch.zeros(len(rows), S, dtype=torch.long)
                mask = torch.zeros(len(rows), P + S, dtype=torch.long)
                mask[:, :P] = 1
                for r, a in enumerate(answers):
                    ids[r, :len(a) - 1] = torch.tensor(a[:-1], dtype=torch.long)
                    mask[r, P:P + len(a) - 1] = 1
                cache = copy.deepcopy(pre.past_key_values)
                cache.batch_repeat_interleave(len(rows))
                pos = torch.arange(P, P + S).expand(len(rows), S)
                h = base(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                         past_key_values=cache, use_cache=True).last_hidden_state
                lp = torch.log_softmax(head(h.reshape(-1, h.shape[-1])).float(), -1).view(len(rows), S, -1).cpu()
                for r, a in enumerate(answers):
                    total[r] += sum(float(lp[r, t - 1, a[t]]) for t in range(1, len(a)))
            out[rows] = total
    return out
