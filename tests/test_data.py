"""The dataset: templates, sizes, answers and memorize / change-one labels (no model needed)."""
import pytest

from cna_utils.data import arithmetic
from cna_utils.data.arithmetic import align, arithmetic_dataset, digit_kinds
from cna_utils.measure.vocab import load_lexicon
from cna_utils.paper.depth import spread_layers
from cna_utils.paper.numbers import paper_table
from cna_utils.store.profiles import get_profile, PROFILES


def test_sizes_and_paper_set():
    assert len(arithmetic_dataset(digits=(2,), n=50)) == 1600             # the paper's 1,600 sentences
    assert len(arithmetic_dataset(ops="+", digits=(1,), templates=[4], words=False)) == 81   # every 1-digit pair
    assert len(arithmetic_dataset(ops="-", digits=(1,), templates=[4], words=False)) == 45   # a >= b


def test_answers_are_right():
    for c in arithmetic_dataset(digits=(1, 2, 3), n=20, words=False):
        a, b = c.a, c.b
        expected = {"+": a + b, "-": a - b, "*": a * b, "/": a / b}[c.op]
        assert float(c.answer) == expected, c
        assert len(str(b)) == c.digits
        if c.op == "/":
            assert a % b == 0 and len(str(a // b)) == c.digits
        if c.op == "-":
            assert a >= b
    neg = arithmetic_dataset(ops="-", digits=(1,), n=None, words=False, templates=[4], negative=True)
    assert any(c.result < 0 and c.answer.startswith("-") for c in neg)


def test_templates_are_the_papers():
    tables = paper_table("table_14_prompts")
    for op, name in arithmetic.OPS.items():
        assert arithmetic.TEMPLATES[op][:4] == tables[name]                     # Table 14, verbatim
        assert arithmetic.TEMPLATES[op][4] == "{n1}" + op + "{n2}="            # the authors' code prompt
    c = arithmetic_dataset(ops="/", digits=(1,), n=1, templates=[2])
    assert c[0].prompt.startswith("Q: What is ") and c[1].form == "word" and c[1].answer.isalpha()


def test_template_choice_and_answer_form():
    assert {c.template for c in arithmetic_dataset(ops="+", digits=(1,), n=2)} == {1, 2, 3, 4}   # "all" = Table 14
    five = arithmetic_dataset(ops="*", digits=(1,), n=3, templates=[5], words=True, answers="number")
    assert [c.prompt for c in five if c.form == "number"] == [f"{c.a}*{c.b}=" for c in five if c.form == "number"]
    words = [c for c in five if c.form == "word"]
    assert all(c.answer == str(c.a * c.b) and c.answer_form == "number" and not c.prompt[0].isdigit() for c in words)
    same = arithmetic_dataset(ops="*", digits=(1,), n=3, templates=[5], words=True)
    assert all(not c.answer.isdigit() and c.answer_form == "word" for c in same if c.form == "word")
    assert arithmetic.answer_separator(5, "number") == "" and arithmetic.answer_separator(5, "word") == " "
    with pytest.raises(ValueError, match="template"):
        arithmetic_dataset(templates=[6])
    with pytest.raises(ValueError, match="answers must be"):
        arithmetic_dataset(answers="words")


def test_memorize_change_one_labels():
    # the paper's examples: 15+32=47 is memorize twice; 15+37=52 needs a carry into the tens digit
    assert digit_kinds("+", 15, 32) == ("memorize", "memorize")
    assert digit_kinds("+", 15, 37) == ("change-one", "memorize")
    assert digit_kinds("+", 57, 68) == ("change-one", "change-one", "memorize")        # 125: the 1 is only a carry
    assert digit_kinds("-", 52, 37) == ("change-one", "memorize")                       # 15: borrow into the tens
    assert digit_kinds("-", 57, 32) == ("memorize", "memorize")
    assert digit_kinds("-", 3, 5) == ("sign", "memorize")
    assert digit_kinds("*", 12, 34) == ("change-one", "change-one", "memorize")         # 408
    assert digit_kinds("/", 72, 8) == ("memorize",)


def test_same_pairs_across_templates_and_forms():
    cases = arithmetic_dataset(ops="*", digits=(2,), n=3, seed=4)
    pairs = {(c.template, c.form): [] for c in cases}
    for c in cases:
        pairs[(c.template, c.form)].append((c.a, c.b))
    assert len({tuple(v) for v in pairs.values()}) == 1
    assert arithmetic_dataset(ops="*", digits=(2,), n=3, seed=4) == cases     # deterministic


def test_profiles_are_complete():
    for name in PROFILES:
        p = get_profile(name)
        assert {"pairs_base", "pairs_2d", "pairs_digits", "digits", "sweep_layers", "sweep_words", "batch_size"} <= set(p["ch1"])
    assert spread_layers(30, 3) == [0, 14, 29] or spread_layers(30, 3) == [0, 15, 29]
    assert spread_layers(30, None) == list(range(30))


def test_multiplication_labels_by_token():
    """For * and /, the last answer TOKEN is memorize and the others change-one, however digits are grouped."""
    class ThreeDigitTokens:
        def __call__(self, text):
            return {"input_ids": [ord(ch) for ch in text]} if not text.endswith(" 408") else \
                {"input_ids": [ord(ch) for ch in text[:-4]] + [ord(" "), 408]}

        def decode(self, ids):
            return "".join("408" if i == 408 else chr(i) for i in ids)

    c = [x for x in arithmetic_dataset(ops="*", digits=(2,), n=None, templates=[4], words=False)
         if (x.a, x.b) == (12, 34)]
    aligned = align(c, ThreeDigitTokens())[0]
    assert aligned.answer_ids == (408,) and aligned.kinds == ("memorize",)


def test_lexicon_has_number_words_in_five_languages():
    lex = load_lexicon()
    words = {w for ws in lex.values() for w in ws}
    for w in ("8", "eight", "huit", "acht", "otto", "ocho", "VIII", "plus", "fifth", "hundred"):
        assert w in words, w
    for w in ("un", "tre", "-", "="):                   # subword pieces and punctuation are left out
        assert w not in words, w


def test_operand_positions_cover_multi_token_operands():
    from types import SimpleNamespace
    from cna_utils.data.arithmetic import operand_positions

    class Digits:                                   # one token per character, as Qwen2 writes digits
        def decode(self, ids):
            return "".join(chr(i) for i in ids)

    case = lambda text, a, b: SimpleNamespace(prompt=text, prompt_ids=[ord(ch) for ch in text], a=a, b=b)
    assert operand_positions(Digits(), case("72 / 8 =", 72, 8)) == [0, 1, 5]
    assert operand_positions(Digits(), case("3 + 3 =", 3, 3)) == [0, 4]
    assert operand_positions(Digits(), case("12 + 21 =", 12, 21)) == [0, 1, 5, 6]
    with pytest.raises(ValueError, match="not found"):
        operand_positions(Digits(), case("5 + 6 =", 7, 6))
