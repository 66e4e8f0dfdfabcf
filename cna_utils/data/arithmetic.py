"""The arithmetic dataset of the paper (Section 3.2, Appendix A) with token-aligned answers.

Usage::

    cases = arithmetic_dataset(ops="+-", digits=(1, 2), n=20, tokenizer=tok)
    cases[0].prompt, cases[0].answer, cases[0].answer_ids   # 'The sum of 3 and 5 is', '8', (40,)

Choices this module makes (documented, not hidden):

* Four templates per operation, verbatim from the paper's Table 14 (``templates="all"``), plus
  template 5, the prompt of the authors' released code: ``"3+5="`` with no spaces and the answer
  right after "=" (Table 14's template 4 is ``"3 + 5 ="``; a model may answer one far better than
  the other, so the chapters say which they use). ``form="number"`` writes the operands as
  numerals ("3"), ``form="word"`` as English number words ("three").
* The answer's form: ``answers="same"`` writes it like the operands ("forty-six" after a word
  prompt), ``answers="number"`` always as a numeral ("46"). The paper says only that its prompts
  include number words; the models here answer word prompts with numerals, so both readings exist
  and ``Case.answer_form`` says which one a case uses.
* Operands: a d-digit case has d-digit operands (1-digit: 1-9). Subtraction keeps a >= b unless
  ``negative=True`` (then b > a is allowed and "3 - 5 =" answers "-2"). Division is generated as the
  inverse of multiplication -- divisor and quotient are d-digit, the dividend is their product -- so
  every answer is an integer ("72 / 8 =" -> "9"); non-integer results never occur.
* ``n`` operand pairs are drawn per (op, digits) without replacement (seeded), and the SAME pairs
  are written in every template and form, so templates are compared on equal footing. ``n=None``
  takes every pair (fine for 1 digit; 2-digit + has 8,100).
* Answer alignment (``align``): the model reads the prompt and must produce the answer as its
  next token(s). Many tokenizers (Llama's, SmolLM2's) split " 8" into a space token and "8", so
  after "... =" the true next token is the space. We tokenize prompt + " " + answer (template 5:
  prompt + answer, no space), check that the
  prompt's tokens are a prefix, move leading whitespace-only tokens into the prompt, and score the
  answer's first non-space token. A prompt whose answer does not start a new token raises
  ``AlignmentError``.
* Digit labels (Section 3.4): each digit of a numeral answer is "memorize" or "change-one". For +
  and -, a digit is change-one when it receives a carry / borrow from the digits to its right
  (a leading digit that only exists because of a carry is change-one). For * and /, the last digit
  is memorize and the others change-one, as in the paper. Sign tokens are "sign"; word answers "".
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

from num2words import num2words

__all__ = ["Operation", "OPERATIONS", "Case", "Arithmetic", "operand_positions", "AlignmentError", "TEMPLATES", "TABLE14", "OPS", "answer_separator",
           "arithmetic_dataset", "align", "digit_kinds", "digit_cases", "number_word"]

@dataclass(frozen=True)
class Operation:
    """One operation's names: the word the prose uses, the short name measure keys use, and the
    column name of the paper's Table 2."""
    symbol: str
    word: str
    short: str
    paper: str


# The one table of operation names; OPS and the other maps are read from it.
OPERATIONS = {o.symbol: o for o in (Operation("+", "addition", "add", "add"),
                                    Operation("-", "subtraction", "sub", "sub"),
                                    Operation("*", "multiplication", "mul", "multi"),
                                    Operation("/", "division", "div", "divide"))}
OPS = {s: o.word for s, o in OPERATIONS.items()}
# Paper Table 14 (Appendix A), in the paper's order: template 1..4 for each operation.
TEMPLATES = {
    "+": ["The sum of {n1} and {n2} is", "Q: What is {n1} plus {n2}? A:", "{n1} plus {n2} is", "{n1} + {n2} ="],
    "-": ["The difference between {n1} and {n2} is", "Q: What is {n1} minus {n2}? A:", "{n1} minus {n2} is",
          "{n1} - {n2} ="],
    "*": ["The product of {n1} and {n2} is", "Q: What is {n1} times {n2}? A:", "{n1} times {n2} is", "{n1} * {n2} ="],
    "/": ["The ratio of {n1} and {n2} is", "Q: What is {n1} divides {n2}? A:", "{n1} divides {n2} is",
          "{n1} / {n2} ="],
}
# Template 5: the prompt of the authors' released code (no spaces; the answer follows "=" directly).
for _op in TEMPLATES:
    TEMPLATES[_op].append("{n1}" + _op + "{n2}=")
TABLE14 = (1, 2, 3, 4)


def answer_separator(template: int, answer_form: str) -> str:
    """What stands between prompt and answer: nothing after template 5's "=" when the answer is a
    numeral ("3+5=8", as in the authors' code), a space everywhere else ("3+5= eight")."""
    return "" if template == 5 and answer_form == "number" else " "


FORMS = ("number", "word")


class AlignmentError(ValueError):
    """The answer is not a clean next token after the prompt."""


@dataclass(frozen=True)
class Case:
    """One prompt and its answer. ``prompt_ids``/``answer_ids`` are empty until ``align``.

    ``template`` is 1-4 (the paper's Table 14 row within the op) or 5 (the authors' code prompt);
    ``form`` is how the operands are written, ``answer_form`` how the answer is; ``kinds`` labels
    each answer token ("memorize", "change-one", "sign", or "" for word answers)."""
    prompt: str
    answer: str
    op: str
    digits: int
    template: int
    form: str
    a: int
    b: int
    result: int
    prompt_ids: tuple[int, ...] = ()
    answer_ids: tuple[int, ...] = ()
    kinds: tuple[str, ...] = ()
    answer_form: str = "number"
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def name(self) -> str:
        answer = "" if self.answer_form == self.form else f"->{self.answer_form}"
        return f"{self.op}{self.digits}D t{self.template} {self.form}{answer}"

    @property
    def group(self) -> str:
        """'2D+' style label used in the paper's tables."""
        return f"{self.digits}D{self.op}"

    def to_row(self) -> dict:
        return dict(prompt=self.prompt, answer=self.answer, op=self.op, digits=self.digits,
                    group=self.group, template=self.template, form=self.form, answer_form=self.answer_form,
                    a=self.a, b=self.b)


def number_word(x: int) -> str:
    """English number word: 47 -> 'forty-seven', -2 -> 'minus two'."""
    return ("minus " + num2words(-x)) if x < 0 else num2words(x)


def _operand_range(d: int) -> range:
    return range(1, 10) if d == 1 else range(10 ** (d - 1), 10 ** d)


def _pairs(op: str, d: int, negative: bool) -> list[tuple[int, int]]:
    r = _operand_range(d)
    if op == "/":  # (dividend, divisor) with an integer d-digit quotient
        return [(q * v, v) for v in r for q in r]
    if op == "-" and not negative:
        return [(a, b) for a in r for b in r if a >= b]
    return [(a, b) for a in r for b in r]


def _result(op: str, a: int, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b, "/": a // b if b else 0}[op]


def digit_kinds(op: str, a: int, b: int) -> tuple[str, ...]:
    """Per character of the numeral answer: 'memorize', 'change-one' or 'sign' (paper Section 3.4)."""
    res = _result(op, a, b)
    text = str(abs(res))
    n = len(text)
    out = []
    for i in range(n):
        j = n - 1 - i                       # power of ten of this digit
        if op in "*/":
            out.append("memorize" if j == 0 else "change-one")
            continue
        p = 10 ** j
        if op == "+":
            carry = j > 0 and (a % p + b % p) >= p
        else:
            big, small = (a, b) if a >= b else (b, a)
            carry = j > 0 and (big % p) < (small % p)
        out.append("change-one" if carry else "memorize")
    return (("sign",) if res < 0 else ()) + tuple(out)


def _parse_selection(value, allowed, what: str, default=None):
    if value == "all" or value is None:
        return list(default or allowed)
    items = list(value) if not isinstance(value, int) else [value]
    bad = [v for v in items if v not in allowed]
    if bad:
        raise ValueError(f"unknown {what} {bad!r}; choose from {list(allowed)} or 'all'")
    return items


@dataclass(frozen=True)
class Arithmetic:
    """Which of the paper's arithmetic prompts to make (``arithmetic_dataset`` takes the same fields).

    ``ops``: any of "+-*/"; ``digits``: operand digit counts (1, 2, 3); ``templates``: "all" (Table
    14's four) or template numbers 1-5 (5: the authors' code prompt ``"3+5="``); ``words``: also
    write every pair with number words; ``answers``: "same" (a word prompt's answer in words) or
    "number" (every answer a numeral); ``n``: operand pairs per (op, digits), ``None`` = all pairs,
    drawn with ``seed``; ``negative``: allow a < b in subtraction.

    Size: len(ops) x len(digits) x n x len(templates) x (2 if words else 1). The paper's 2-digit
    set (1,600 sentences) is ``Arithmetic(digits=(2,), n=50)``.
    """
    ops: str | tuple = "+-*/"
    digits: tuple | int = (1, 2)
    templates: str | tuple | int = "all"
    words: bool = True
    n: int | None = None
    seed: int = 0
    negative: bool = False
    answers: str = "same"

    def cases(self, tokenizer=None) -> list[Case]:
        """The prompts; with ``tokenizer`` they come back aligned (see ``align``)."""
        ops_l = _parse_selection(list(self.ops) if isinstance(self.ops, str) else self.ops, list(OPS), "op")
        digits_l = _parse_selection(self.digits, [1, 2, 3, 4], "digit count")
        tmpl_l = _parse_selection(self.templates, [1, 2, 3, 4, 5], "template", default=TABLE14)
        if self.answers not in ("same", "number"):
            raise ValueError(f"answers must be 'same' (written like the operands) or 'number' (numerals), "
                             f"got {self.answers!r}")
        if self.n is not None and self.n < 1:
            raise ValueError(f"n must be a positive number of operand pairs (or None for all), got {self.n!r}")
        forms = FORMS if self.words else FORMS[:1]
        rng = random.Random(self.seed)
        cases = []
        for op in ops_l:
            for d in digits_l:
                pairs = _pairs(op, d, self.negative)
                if self.n is not None and self.n < len(pairs):
                    pairs = rng.sample(pairs, self.n)
                for a, b in pairs:
                    cases += [self._case(op, d, t, form, a, b) for t in tmpl_l for form in forms]
        return align(cases, tokenizer) if tokenizer is not None else cases

    def _case(self, op, d, t, form, a, b) -> Case:
        res = _result(op, a, b)
        show = str if form == "number" else number_word
        answer_form = "number" if self.answers == "number" else form
        answer = str(res) if answer_form == "number" else number_word(res)
        return Case(TEMPLATES[op][t - 1].format(n1=show(a), n2=show(b)), answer, op, d, t, form, a, b, res,
                    answer_form=answer_form)


def arithmetic_dataset(tokenizer=None, **fields) -> list[Case]:
    """The paper's arithmetic prompts: ``Arithmetic(**fields).cases(tokenizer)`` (the fields: ops,
    digits, templates, words, n, seed, negative, answers; see ``Arithmetic``). With ``tokenizer``
    the cases come back aligned (see ``align``). The paper's 2-digit set (1,600 sentences) is
    ``arithmetic_dataset(digits=(2,), n=50)``."""
    return Arithmetic(**fields).cases(tokenizer)


def _token_kinds(case: Case, tokenizer, answer_ids) -> tuple[str, ...]:
    if case.answer_form != "number":
        return ("",) * len(answer_ids)
    if case.op in "*/":                                      # the paper: last token memorize, others change-one
        return ("change-one",) * (len(answer_ids) - 1) + ("memorize",)
    chars = digit_kinds(case.op, case.a, case.b)            # per character of the answer text
    kinds, pos = [], 0
    for tid in answer_ids:
        piece = tokenizer.decode([tid]).strip()
        covered = chars[pos:pos + len(piece)]
        pos += len(piece)
        kinds.append("change-one" if "change-one" in covered else (covered[-1] if covered else ""))
    return tuple(kinds)


def align(cases: list[Case], tokenizer) -> list[Case]:
    """Attach token ids: the prompt the model reads and the answer tokens it must produce.

    Raises ``AlignmentError`` when the prompt's tokens are not a prefix of prompt+answer's tokens
    (the answer would not start a new token)."""
    out = []
    for c in cases:
        if c.prompt_ids and c.answer_ids:
            out.append(c)
            continue
        p = tokenizer(c.prompt)["input_ids"]
        full = tokenizer(c.prompt + answer_separator(c.template, c.answer_form) + c.answer)["input_ids"]
        if full[:len(p)] != p:
            raise AlignmentError(
                f"the answer {c.answer!r} does not start a new token after {c.prompt!r}: the prompt's tokens "
                f"{p} are not a prefix of the prompt+answer tokens {full}. Rewrite the template so the "
                "answer follows a space or punctuation.")
        rest = full[len(p):]
        lead = 0
        while lead < len(rest) and tokenizer.decode([rest[lead]]).strip() == "":
            lead += 1
        prompt_ids, answer_ids = tuple(p + rest[:lead]), tuple(rest[lead:])
        if not answer_ids:
            raise AlignmentError(f"the answer {c.answer!r} of {c.prompt!r} tokenizes to whitespace only")
        out.append(replace(c, prompt_ids=prompt_ids, answer_ids=answer_ids,
                           kinds=_token_kinds(c, tokenizer, answer_ids)))
    return out


def digit_cases(cases: list[Case]) -> list[Case]:
    """One teacher-forced single-token case per answer token (Section 3.4: "15+32= -> 4" and
    "15+32=4 -> 7" are two cases). ``meta['position']`` is the token's index in the answer and
    ``meta['kind']`` its memorize / change-one label."""
    out = []
    for c in cases:
        if not c.answer_ids:
            raise ValueError("digit_cases needs aligned cases: call align(cases, tokenizer) first")
        for i, tid in enumerate(c.answer_ids):
            out.append(replace(c, prompt_ids=c.prompt_ids + c.answer_ids[:i], answer_ids=(tid,),
                               kinds=(c.kinds[i],), meta={"position": i, "kind": c.kinds[i]}))
    return out


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
