"""fathom_jobs.grading: answer extraction, strict and LIMO equivalence, batch grading.

The equivalence tables hold (prediction, gold) pairs in the answer styles of the eval
sets: AIME integers, HMMT expressions/radicals/fractions/tuples, AMC floats, MATH
intervals/sets/degrees/units/text/matrices, GPQA letters. ``BOTH`` pairs have one verdict
in both modes; ``MODES_DIFFER`` pairs say why strict and LIMO disagree. LIMO verdicts
follow LIMO's ``strip_string`` + ``math_equal`` step by step (see limo.py), quirks included.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from fathom_jobs.grading import (
    ExtractOptions,
    Grader,
    choice_letter,
    extract_answer,
    extract_boxed,
    extract_choice,
    grade,
    grade_batch,
    is_equivalent,
    limo_extract_answer,
    limo_strip_string,
    normalize,
)
from fathom_jobs.grading.latex_eval import evaluate
from fathom_jobs.grading.limo_text import word_to_number
from fathom_jobs.grading.pool import SymbolicPool

# (prediction, gold, verdict in both modes)
BOTH = [
    # AIME: integers 0-999, leading zeros, formatting around them
    ("70", "70", True),
    ("070", "70", True),
    ("033", "33", True),
    ("0103", "103", True),
    ("33.0", "33", True),
    ("33.00", "33", True),
    ("34", "33", False),
    ("7", "70", False),
    ("700", "70", False),
    ("70.5", "70", False),
    ("0", "0", True),
    ("-0", "0", True),
    ("5", "005", True),
    ("33\\%", "33", True),
    ("1,000", "1000", True),
    ("\\$1000", "1000", True),
    ("1000 \\text{ dollars}", "1000", True),
    ("\\text{70}", "70", True),
    ("70 ways", "70", True),
    ("\\mathbf{70}", "70", True),
    ("\\frac{140}{2}", "70", True),
    ("\\sqrt{4900}", "70", True),
    ("3375", "3375", True),
    ("3,375", "3375", True),
    ("3376", "3375", False),
    ("-984", "-984", True),
    ("984", "-984", False),
    ("123456789", "123456788", False),
    ("1000000", "10^6", True),
    ("10^6", "1000001", False),
    # AMC: float golds
    ("27", "27.0", True),
    ("27.5", "27.0", False),
    ("3159", "3159.0", True),
    ("3,159", "3159.0", True),
    ("-1", "-1.0", True),
    ("1", "-1.0", False),
    ("\\frac{54}{2}", "27.0", True),
    ("12.50", "12.5", True),
    ("\\$ 12.50", "12.5", True),
    ("1.27", "1.270", True),
    # fractions
    ("\\frac{3}{4}", "\\frac34", True),
    ("3/4", "\\frac{3}{4}", True),
    ("0.75", "\\frac{3}{4}", True),
    ("\\dfrac{3}{4}", "\\frac{3}{4}", True),
    ("\\tfrac{3}{4}", "0.75", True),
    ("\\frac{6}{8}", "\\frac{3}{4}", True),
    ("\\frac{4}{3}", "\\frac{3}{4}", False),
    ("0.333", "\\frac{1}{3}", False),
    ("\\frac{1311}{2016}", "\\frac{1311}{2017}", False),
    ("-\\frac{3}{4}", "\\frac{-3}{4}", True),
    ("\\frac{-3}{4}", "-0.75", True),
    ("1/576", "\\frac{1}{576}", True),
    ("\\frac{8}{18}", "\\frac{4}{9}", True),
    ("\\frac{7}{19}", "\\frac{7}{18}", False),
    ("\\frac{89}{200}", "$\\frac{89}{200}$", True),
    ("5/12", "\\frac{5}{12}", True),
    ("0.65", "\\frac{13}{20}", True),
    ("2.5", "\\frac{5}{2}", True),
    ("4.5", "\\frac{9}{2}", True),
    ("4.50", "\\frac{9}{2}", True),
    ("-\\frac{1}{2}", "\\frac{1}{2}", False),
    ("\\frac{7}{18}", "0.39", False),
    ("33", "33.5", False),
    ("-5", "5", False),
    # HMMT: radicals, pi, big exact values, lists of roots
    ("8\\sqrt{10}", "8\\sqrt{10}", True),
    ("\\sqrt{640}", "8\\sqrt{10}", True),
    ("8 \\sqrt{10}", "8\\sqrt{10}", True),
    ("8\\sqrt{11}", "8\\sqrt{10}", False),
    ("\\frac{9\\sqrt{23}}{23}", "\\frac{9}{\\sqrt{23}}", True),
    ("\\frac{9 \\sqrt{23}}{23}", "\\frac{9\\sqrt{23}}{23}", True),
    ("\\frac{9\\sqrt{23}}{24}", "\\frac{9 \\sqrt{23}}{23}", False),
    ("\\sqrt{23}-2\\sqrt{3}", "\\sqrt{23}-2 \\sqrt{3}", True),
    ("-2\\sqrt{3}+\\sqrt{23}", "\\sqrt{23}-2 \\sqrt{3}", True),
    ("2\\sqrt{3}-\\sqrt{23}", "\\sqrt{23}-2 \\sqrt{3}", False),
    ("9\\sqrt{15}", "\\sqrt{1215}", True),
    ("\\sqrt6", "\\sqrt{6}", True),
    ("6^{1/2}", "\\sqrt{6}", True),
    ("\\sqrt{6.0}", "\\sqrt{6}", True),
    ("4\\sqrt{37}+14", "14+4\\sqrt{37}", True),
    ("14+4\\sqrt{36}", "14+4\\sqrt{37}", False),
    ("\\sqrt{\\frac{95}{24}}", "\\frac{\\sqrt{570}}{12}", True),
    ("\\frac{\\pi-2}{\\pi}", "1-\\frac{2}{\\pi}", True),
    ("1-\\frac{2}{\\pi}", "1-\\frac{1}{\\pi}", False),
    ("2^{25} \\cdot 26!", "2^{25}\\cdot 26!", True),
    ("13532215908553332190020108288000000", "2^{25} \\cdot 26!", True),
    ("\\frac{2025}{101}", "\\frac{2025}{101}", True),
    ("\\frac{2024}{101}", "\\frac{2025}{101}", False),
    (
        "\\frac{-1-\\sqrt{17}}{2}, \\frac{-1+\\sqrt{17}}{2}",
        "\\frac{-1+\\sqrt{17}}{2}, \\frac{-1-\\sqrt{17}}{2}",
        True,
    ),
    ("\\frac{-1\\pm\\sqrt{17}}{2}", "\\frac{-1+\\sqrt{17}}{2}, \\frac{-1-\\sqrt{17}}{2}", False),
    ("\\sqrt{2}\\cdot\\sqrt{3}", "\\sqrt{6}", True),
    ("\\pi^2", "\\pi^{2}", True),
    ("2\\pi", "\\pi", False),
    ("\\binom{10}{3}", "120", True),
    ("5!", "120", True),
    ("10^{-3}", "0.001", True),
    ("2^{10}", "1024", True),
    ("1024", "2^{10}", True),
    ("10!", "3628800", True),
    ("\\sqrt[3]{8}", "2", True),
    ("\\sqrt{2}", "1.414", False),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}\\sqrt{3}", True),
    ("\\frac{1}{\\sqrt{3}}", "\\frac{\\sqrt{3}}{3}", True),
    # expressions with variables
    ("\\frac{x}{7}+\\frac{2}{7}", "\\frac{x+2}{7}", True),
    ("x+1", "1+x", True),
    ("x+2", "x+1", False),
    ("(x+1)^2", "x^2+2x+1", True),
    ("(x+1)^2", "x^2+x+1", False),
    ("2x", "x+x", True),
    ("\\frac{1}{x}", "x^{-1}", True),
    ("2^{n+1}", "2\\cdot 2^n", True),
    ("2^{n+1}", "2^n", False),
    ("3+4i", "4i+3", True),
    # tuples, intervals, sets, unions
    ("(1,2)", "(1, 2)", True),
    ("\\left(1,2\\right)", "(1,2)", True),
    ("(2,1)", "(1,2)", False),
    ("(-1, 1)", "(1, -1)", False),
    ("(1, 2)", "(1, 2, 3)", False),
    ("[1,2]", "[1,2]", True),
    ("(\\frac{1}{2}, \\sqrt{2})", "(0.5, \\sqrt{2})", True),
    ("(\\frac{1}{2}, \\sqrt{3})", "(0.5, \\sqrt{2})", False),
    ("x=1, y=2", "(1,2)", True),
    ("(-\\infty, 3)", "(-\\infty,3)", True),
    ("(-\\infty,1)\\cup(2,\\infty)", "(-\\infty, 1) \\cup (2, \\infty)", True),
    ("\\{1,2\\}", "\\{2,1\\}", True),
    ("\\{1, 2, 3\\}", "\\{3, 2, 1\\}", True),
    ("\\{1, 2\\}", "\\{1, 2, 3\\}", False),
    ("1, 2", "\\{1,2\\}", True),
    ("2, 1", "1, 2", True),
    ("1, 2, 3", "1, 2", False),
    ("2190, 2490, 2790, 2295, 2595, 2895", "2190, 2295, 2490, 2595, 2790, 2895", True),
    ("2190, 2490, 2790, 2295, 2595, 2896", "2190, 2295, 2490, 2595, 2790, 2895", False),
    # equations
    ("x=5", "5", True),
    ("5", "x=5", True),
    ("k=5", "5", True),
    ("x = 5", "5", True),
    ("x=3", "x=4", False),
    ("y=2x+3", "y=3+2x", True),
    ("y=2x+3", "2x+3", True),
    ("y=2x+3", "y=2x+4", False),
    ("y = -x + 2", "y=2-x", True),
    ("x^2+y^2=1", "y^2+x^2=1", True),
    ("x=1, x=2", "1, 2", True),
    # degrees, percentages, units, text
    ("30^\\circ", "30", True),
    ("30", "30^{\\circ}", True),
    ("30 degrees", "30^\\circ", True),
    ("\\frac{\\pi}{6}", "30^\\circ", False),
    ("45\\%", "45", True),
    ("50", "50\\%", True),
    ("\\frac{1}{2}", "50\\%", False),
    ("5 \\text{ cm}", "5", True),
    ("70 \\text{ m}", "70", True),
    ("9 \\text{ apples}", "9", True),
    ("5 \\mbox{ cm}", "5", True),
    ("12 \\text{ inches}", "12", True),
    ("12 \\text{ inches}", "1", False),
    ("\\text{Evelyn}", "Evelyn", True),
    ("evelyn", "\\text{Evelyn}", True),
    ("\\text{Bob}", "\\text{Evelyn}", False),
    ("\\text{odd}", "odd", True),
    ("\\text{even}", "\\text{odd}", False),
    ("no solution", "\\text{no solution}", True),
    ("\\text{yes}", "Yes", True),
    ("\\text{no}", "yes", False),
    # matrices
    ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "\\begin{bmatrix}1&2\\\\3&4\\end{bmatrix}", True),
    ("\\begin{pmatrix}1&2\\\\3&5\\end{pmatrix}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", False),
    ("\\begin{pmatrix} \\frac{1}{2} \\\\ 3 \\end{pmatrix}", "\\begin{pmatrix} 0.5 \\\\ 3 \\end{pmatrix}", True),
    ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix}1&2\\end{pmatrix}", False),
    # GPQA: option letters
    ("B", "B", True),
    ("(B)", "B", True),
    ("\\text{B}", "B", True),
    ("\\text{(C)}", "C", True),
    ("\\boxed{C}", "C", True),
    ("B. 10^{-4} eV", "B", True),
    ("C", "B", False),
    ("A", "B", False),
    ("D", "A", False),
    # degenerate
    ("", "5", False),
    ("-\\infty", "\\infty", False),
    ("\\infty", "\\infty", True),
]

# (prediction, gold, strict verdict, limo verdict, why the modes differ)
MODES_DIFFER = [
    ("3300", "33", False, True, "LIMO accepts gold x100 (include_percentage)"),
    ("0.33", "33", False, True, "LIMO accepts gold /100"),
    ("7000", "70", False, True, "LIMO accepts gold x100"),
    ("0.7", "70", False, True, "LIMO accepts gold /100"),
    ("1.03", "103", False, True, "LIMO accepts gold /100"),
    ("5000", "50\\%", False, True, "LIMO drops % then accepts x100"),
    ("0.45", "45\\%", False, True, "LIMO drops % then accepts /100"),
    ("45", "0.45", False, True, "LIMO accepts gold x100"),
    ("70.00001", "70", False, True, "LIMO numeric_equal: abs_tol 1e-4"),
    ("69.99999", "70", False, True, "LIMO numeric_equal: abs_tol 1e-4"),
    ("0.3333", "\\frac{1}{3}", False, True, "LIMO symbolic_equal falls back to floats, abs_tol 1e-4"),
    ("20.0495", "\\frac{2025}{101}", False, True, "rounded decimal within 1e-4"),
    ("0.001736", "\\frac{1}{576}", False, True, "rounded decimal within 1e-4"),
    ("\\frac{1}{575}", "\\frac{1}{576}", False, True, "abs_tol 1e-4 cannot tell small numbers apart"),
    ("25.2982", "8\\sqrt{10}", False, True, "decimal approximation of a radical within 1e-4"),
    ("1.41421", "\\sqrt{2}", False, True, "decimal approximation of a radical within 1e-4"),
    ("149.3333", "\\frac{448}{3}", False, True, "rounded decimal within 1e-4"),
    ("0.4444", "\\frac{4}{9}", False, True, "rounded decimal within 1e-4"),
    (
        "13532215908553332190020108288000001",
        "2^{25} \\cdot 26!",
        False,
        True,
        "equal as floats, so LIMO's numeric step accepts",
    ),
    ("1234567891234", "1234567891235", False, True, "math.isclose keeps rel_tol 1e-9 beside abs_tol"),
    ("[1,2)", "(1,2)", False, True, "LIMO compares list elements, not bracket kinds"),
    ("(1,2]", "[1,2]", False, True, "LIMO ignores open/closed ends"),
    ("[1, 2]", "(1, 2)", False, True, "LIMO ignores open/closed ends"),
    ("(-\\infty, 3]", "(-\\infty, 3)", False, True, "LIMO ignores open/closed ends"),
    ("x=2, y=1", "(1,2)", False, True, "LIMO sorts comma-separated parts before comparing"),
    ("a^2-b^2", "(a-b)(a+b)", True, False, "LIMO's unit list deletes the variable a"),
    ("x \\in (1, 2)", "(1,2)", True, False, "LIMO strips 'x\\in' only when written without a space"),
    ("5 \\text{ cm}^2", "5", True, False, "LIMO strips cm but keeps the ^2"),
    ("twelve", "12", False, True, "LIMO converts number words (word2number)"),
    ("three hundred", "300", False, True, "LIMO converts number words"),
    ("Option B", "B", True, False, "LIMO's choice cleaning needs a standalone letter"),
    ("A < B", "B", False, True, "LIMO takes the last standalone letter"),
]

# LIMO verdicts that hinge on quirks of sympy's parse_latex, LIMO's first parser, which
# only runs with antlr4-python3-runtime 4.11 (see symbolic._limo_parse):
# (prediction, gold, strict, limo with parse_latex, limo with the latex2sympy stand-in, why)
PARSER_DEPENDENT = [
    (
        "\\frac{-1+\\sqrt{17}}{2}",
        "\\frac{-1+\\sqrt{17}}{2}, \\frac{-1-\\sqrt{17}}{2}",
        False, True, False,
        "parse_latex stops at the first comma, so one root matches the list of two",
    ),
    (
        "(-\\infty,1)\\cup(3,\\infty)",
        "(-\\infty, 1) \\cup (2, \\infty)",
        False, True, False,
        "LIMO splits on commas and parse_latex reads '1)\\cup(3' and '1)\\cup(2' both as 1",
    ),
    ("\\pi", "3.14159", False, False, True, "parse_latex reads \\pi as a symbol, not the constant"),
    ("2\\pi", "6.2832", False, False, True, "parse_latex reads \\pi as a symbol"),
    ("m+n", "n+m", True, True, False, "unit stripping leaves '+n' and 'n+', which parse_latex reads as n"),
]  # fmt: skip

MODES = ("strict", "limo")


def _table(mode: str) -> list[tuple[str, str, bool]]:
    rows = [(p, g, v) for p, g, v in BOTH]
    rows += [(p, g, strict if mode == "strict" else limo) for p, g, strict, limo, _ in MODES_DIFFER]
    return rows


def test_tables_are_large_and_distinct() -> None:
    pairs = [(p, g) for p, g, _ in BOTH] + [(p, g) for p, g, *_ in MODES_DIFFER + PARSER_DEPENDENT]
    assert len(set(pairs)) == len(pairs) >= 200
    for prediction, gold, strict, limo, why in MODES_DIFFER:
        assert strict != limo and why, (prediction, gold)


@pytest.fixture(scope="module")
def graders():
    """One grader per mode for the module (starting a worker pool takes ~2 s)."""
    with Grader("strict", workers=2, timeout_s=20) as strict, Grader("limo", workers=2, timeout_s=20) as limo:
        yield {"strict": strict, "limo": limo}


_table_stats: dict[str, int] = {}


@pytest.fixture(scope="module")
def table_verdicts(graders) -> dict[str, dict[tuple[str, str], bool]]:
    """Every table pair graded once per mode, as one batch (the pool runs in parallel)."""
    verdicts = {}
    for mode in MODES:
        rows = _table(mode)
        before = graders[mode].stats.symbolic
        results = graders[mode].equivalent_batch([(p, g) for p, g, _ in rows])
        _table_stats[mode] = graders[mode].stats.symbolic - before
        verdicts[mode] = {(p, g): r for (p, g, _), r in zip(rows, results)}
    return verdicts


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("prediction,gold,expected", BOTH)
def test_equivalence_same_in_both_modes(table_verdicts, mode, prediction, gold, expected) -> None:
    assert table_verdicts[mode][(prediction, gold)] is expected


@pytest.mark.parametrize("prediction,gold,strict,limo,why", MODES_DIFFER)
def test_equivalence_where_modes_differ(table_verdicts, prediction, gold, strict, limo, why) -> None:
    assert table_verdicts["strict"][(prediction, gold)] is strict, why
    assert table_verdicts["limo"][(prediction, gold)] is limo, why


@pytest.fixture(scope="module")
def parse_latex_usable() -> bool:
    pytest.importorskip("latex2sympy2_extended")
    from fathom_jobs.grading.symbolic import sympy_parse_latex_usable

    return sympy_parse_latex_usable()


@pytest.mark.parametrize("prediction,gold,strict,limo_parse_latex,limo_stand_in,why", PARSER_DEPENDENT)
def test_equivalence_depending_on_limos_parser(
    graders, parse_latex_usable, prediction, gold, strict, limo_parse_latex, limo_stand_in, why
) -> None:
    assert graders["strict"].is_equivalent(prediction, gold) is strict
    expected = limo_parse_latex if parse_latex_usable else limo_stand_in
    assert graders["limo"].is_equivalent(prediction, gold) is expected, why


@pytest.mark.parametrize("mode", MODES)
def test_fast_paths_agree_with_sympy(table_verdicts, mode) -> None:
    """With the numeric shortcuts off, sympy/math-verify decide every pair the shortcuts
    would have settled - and reach the same verdicts."""
    rows = _table(mode)
    with Grader(mode, workers=2, timeout_s=20, fast_paths=False) as grader:
        results = grader.equivalent_batch([(p, g) for p, g, _ in rows])
        assert grader.stats.symbolic > 2 * _table_stats[mode]  # the pool really did the work
    mismatches = [(p, g, v) for (p, g, v), r in zip(rows, results) if r is not v]
    assert mismatches == []


def test_strict_only_cases(graders) -> None:
    grader = graders["strict"]
    assert grader.is_equivalent("149\\frac{1}{3}", "\\frac{448}{3}")  # mixed number
    assert grader.is_equivalent("7 \\frac{3}{11}", "\\frac{80}{11}")
    assert not grader.is_equivalent("7 \\frac{3}{11}", "\\frac{21}{11}")
    assert grader.is_equivalent("\u2212984", "-984")  # Unicode minus
    assert grader.is_equivalent("\\emptyset", "\\varnothing")
    assert not grader.is_equivalent("B or C", "B")  # a hedge picks no option
    assert not grader.is_equivalent("\\{1,2\\}", "(1,2)")  # a set is not a tuple


# ------------------------------------------------------------------ extraction


def test_extract_nested_braces() -> None:
    assert extract_answer(r"so $\boxed{\frac{1}{\sqrt{2}}}$.") == r"\frac{1}{\sqrt{2}}"
    assert extract_answer(r"\boxed{\{1, 2\}}") == r"\{1, 2\}"
    assert extract_answer(r"\boxed{\begin{pmatrix} 1 \\ 2 \end{pmatrix}}") == r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}"


def test_extract_last_of_several_boxes() -> None:
    assert extract_answer(r"First \boxed{3}, then corrected: \boxed{5}.") == "5"
    assert extract_answer(r"\boxed{2} and \fbox{7}") == "7"


def test_extract_box_forms() -> None:
    assert extract_answer(r"The answer is \boxed 5.") == "5"
    assert extract_answer(r"\fbox{12}") == "12"
    assert extract_answer(r"\boxed { 42 }") == "42"
    # a box cut off by the token limit does not hide the previous complete one
    assert extract_answer(r"\boxed{9} ... so finally \boxed{\frac{1}{") == "9"
    assert extract_answer(r"\boxed{} and \boxed{4}") == "4"
    assert extract_boxed("no box here") is None


def test_extract_answer_lines_without_box() -> None:
    assert extract_answer("Thus.\nThe final answer is $42$.") == "42"
    assert extract_answer("**Answer:** 17") == "17"
    assert extract_answer("Answer: C") == "C"
    assert extract_answer(r"Final Answer: \(3\)") == "3"
    assert extract_answer("the answer is 3.\nActually the answer is 4.") == "4"


def test_extract_nothing_and_fallbacks() -> None:
    text = "We get 12 apples and then 15 pears, so $x = 15$ in the end"
    assert extract_answer(text) is None
    assert extract_answer(text, ExtractOptions(fallbacks=("last_number",))) == "15"
    assert extract_answer(text, ExtractOptions(fallbacks=("last_math",))) == "x = 15"
    assert extract_answer("no numbers at all", ExtractOptions(fallbacks=("last_number",))) is None
    with pytest.raises(ValueError):
        ExtractOptions(fallbacks=("first_number",))


def test_extract_think_tags() -> None:
    # a box after </think> wins over boxes drafted while thinking
    assert extract_answer(r"<think>maybe \boxed{3}</think> So the answer is \boxed{5}.") == "5"
    # no box after </think>: the whole text is searched, so the thinking's box counts
    assert extract_answer(r"<think>it is \boxed{3}</think> The answer is 5.") == "3"
    # ... and with no box at all the answer line after </think> is used
    assert extract_answer("<think>hmm</think> The answer is 5.") == "5"
    assert extract_answer(r"<think>\boxed{3}</think>", ExtractOptions(think_tag="")) == "3"


def test_extract_choice() -> None:
    assert extract_choice(r"... so the answer is $\boxed{C}$") == "C"
    assert extract_choice(r"\boxed{\text{(A)}}") == "A"
    assert extract_choice("Therefore, the answer is (D).") == "D"
    assert extract_choice("Answer: B") == "B"
    assert extract_choice("<think>(A) looks wrong</think> The correct option is (C).") == "C"
    assert extract_choice("I cannot decide.") is None
    assert extract_choice(r"\boxed{E}", letters="ABCD") is None


def test_choice_letter() -> None:
    assert choice_letter("(b)") == "B"
    assert choice_letter("B) 10 eV") == "B"
    assert choice_letter("b") is None  # lowercase alone is a variable, not an option
    assert choice_letter("A < B") is None
    assert choice_letter("B or C") is None
    assert choice_letter("AB") is None


def test_limo_extraction_is_boxed_only() -> None:
    assert limo_extract_answer(r"so $\boxed{\frac{1}{2}}$.") == r"\frac{1}{2}"
    assert limo_extract_answer("The final answer is 5") == ""
    assert limo_extract_answer(r"\boxed 12$ done") == "12"
    assert limo_extract_answer(r"\boxed{:7.}") == "7"
    assert extract_answer("The final answer is 5", ExtractOptions(style="limo")) is None


def test_limo_strip_string() -> None:
    assert limo_strip_string("\\dfrac{1}{2}") == "\\frac{1}{2}"
    assert limo_strip_string("x = 5") == "5"
    assert limo_strip_string("5 \\text{ cm}") == "5"
    assert limo_strip_string("\\left( 1,2 \\right)") == "(1,2)"
    assert limo_strip_string("\\frac12") == "\\frac{1}{2}"
    assert limo_strip_string("3/4") == "\\frac{3}{4}"
    assert limo_strip_string("70.0") == "70"
    assert limo_strip_string("50\\%") == "50"
    assert limo_strip_string("twelve") == "12"
    assert limo_strip_string("January 5") == "5"
    # quirks kept on purpose: "a" is a unit, "and" is deleted anywhere
    assert limo_strip_string("(a, b)") == "(,b)"
    assert limo_strip_string("band") == "b"


def test_word_to_number() -> None:
    assert word_to_number("three hundred and forty two") == 342
    assert word_to_number("two million twenty three thousand and forty nine") == 2023049
    assert word_to_number("one point five") == 1.5
    assert word_to_number("42") == 42
    with pytest.raises(ValueError):
        word_to_number("hello")


def test_normalize() -> None:
    assert normalize("$\\$1,000$") == "1000"
    assert normalize("\\left( 1, 2 \\right)") == "(1,2)"
    assert normalize("1, 234") == "1,234"  # a list, not a thousands separator
    assert normalize("x \\in [1, 2)") == "[1,2)"
    assert normalize("\\boxed{\\dfrac{3}{4}}") == "\\frac{3}{4}"
    assert normalize("5m") == "5m"  # a product, not five metres
    assert normalize("5 m") == "5"


@pytest.mark.parametrize(
    "latex",
    ["70", "\\frac{9\\sqrt{23}}{23}", "2^{25}\\cdot26!", "\\sqrt{23}-2\\sqrt{3}", "1-\\frac{2}{\\pi}", "2^10",
     "2^{-1}", "\\sqrt[3]{27}", "3\\pi", "-2^2", "(-2)^2", "\\binom{5}{2}", "\\sqrt{\\frac{95}{24}}", "6\\div4",
     "2^{3^2}", "4^{1/2}", "1+2\\cdot3", "\\pi^2", "10^{-3}", ".5", "3\\times4"],
)  # fmt: skip
def test_fast_evaluator_reads_like_latex2sympy(latex) -> None:
    """The LIMO fast path is exact only if the evaluator and the parser agree."""
    latex2sympy = pytest.importorskip("latex2sympy2_extended").latex2sympy
    sympy = pytest.importorskip("sympy")
    value = evaluate(latex)
    assert value is not None
    reference = float(sympy.N(latex2sympy(latex)))
    assert float(value.value) == pytest.approx(reference, rel=1e-12)


@pytest.mark.parametrize("latex", ["2(5)", "2\\frac{1}{2}", "{12}", "x+1", "10^{10^{10}}", "\\sqrt{-4}", "1/0"])
def test_fast_evaluator_declines_ambiguous_or_huge(latex) -> None:
    assert evaluate(latex) is None


# ------------------------------------------------------------------ timeouts


@pytest.mark.parametrize("mode", MODES)
def test_pathological_answer_is_false_without_hanging(mode) -> None:
    with Grader(mode, workers=1, timeout_s=2) as grader:
        started = time.monotonic()
        assert grader.is_equivalent("10^{10^{10}}", "5") is False
        assert grader.is_equivalent("9^{9^{9^{9}}}", "5") is False
        elapsed = time.monotonic() - started
        assert grader.stats.timeouts + grader.stats.soft_timeouts >= 2
        assert grader.is_equivalent("\\sqrt{4}", "2")  # the pool still works afterwards
    assert elapsed < 20  # two items under a 2 s limit, plus the pool's start


def test_hard_timeout_kills_and_replaces_the_worker() -> None:
    # soft_budget_s beyond the hard limit: only killing the worker can end the item
    pool = SymbolicPool(workers=1, timeout_s=2, soft_budget_s=60)
    try:
        started = time.monotonic()
        outcomes = pool.run([("strict", "10^{10^{10}}", "5"), ("strict", "\\sqrt{640}", "8\\sqrt{10}")])
        elapsed = time.monotonic() - started
    finally:
        pool.close()
    assert outcomes[0].timed_out and outcomes[0].verdict is False
    assert outcomes[1].verdict is True and not outcomes[1].timed_out
    assert elapsed < 20


def test_timeout_counts_in_batch_and_others_unaffected() -> None:
    pairs = [(r"\boxed{10^{10^{10}}}", "5"), (r"\boxed{\sqrt{640}}", "8\\sqrt{10}"), (r"\boxed{7}", "7")]
    with Grader("strict", workers=2, timeout_s=2) as grader:
        assert grader.grade_batch(pairs) == [False, True, True]
        assert grader.stats.timeouts + grader.stats.soft_timeouts == 1


# ------------------------------------------------------------------ batches, caching, API

MIXED_RESPONSES = [
    (r"Adding up, the answer is $\boxed{70}$.", "70"),
    (r"<think>try \boxed{69}</think> **Final Answer** \[ \boxed{070} \]", 70),
    ("The final answer is $27$.", 27.0),
    (r"\boxed{27.5}", "27.0"),
    (r"\boxed{\dfrac{9\sqrt{23}}{23}}", "\\frac{9 \\sqrt{23}}{23}"),
    (r"\boxed{\frac{9}{\sqrt{23}}}", "\\frac{9 \\sqrt{23}}{23}"),
    (r"\boxed{\frac{1311}{2016}}", "\\frac{1311}{2017}"),
    (r"so the interval is \boxed{[1, 2)}", "(1, 2)"),
    (r"\boxed{x = 1, y = 2}", "(1, 2)"),
    (r"\boxed{3300}", "33"),
    (r"\boxed{0.3333}", "\\frac{1}{3}"),
    (r"\boxed{\frac{x+2}{7}}", "\\frac{x}{7}+\\frac{2}{7}"),
    (r"\boxed{(x+1)^2}", "x^2+x+1"),
    (r"\boxed{30^\circ}", "30"),
    (r"\boxed{\text{(B)}}", "B"),
    ("Answer: C", "B"),
    ("I don't know.", "12"),
    (r"\boxed{\sqrt{2}+\sqrt{3}}", "\\sqrt{5+2\\sqrt{6}}"),
    (r"Adding up, the answer is $\boxed{70}$.", "70"),  # an exact repeat
]


@pytest.mark.parametrize("mode", MODES)
def test_grade_batch_equals_per_pair_grade(graders, mode) -> None:
    with Grader(mode, workers=2) as batch_grader:  # its own cache: nothing carried over
        batch = batch_grader.grade_batch(MIXED_RESPONSES)
    singles = [graders[mode].grade(response, gold) for response, gold in MIXED_RESPONSES]
    assert batch == singles
    assert True in batch and False in batch


def test_grade_batch_verdicts() -> None:
    expected_strict = [True, True, True, False, True, True, False, False, True, False, False, True, False, True,
                       True, False, False, True, True]  # fmt: skip
    assert grade_batch(MIXED_RESPONSES, "strict") == expected_strict
    limo = grade_batch(MIXED_RESPONSES, "limo")
    # LIMO reads boxes only, ignores interval ends, accepts x100 and abs_tol 1e-4
    assert limo[2] is False and limo[7] is True and limo[9] is True and limo[10] is True


def test_duplicates_are_graded_once() -> None:
    pairs = [(r"\boxed{70}", "70"), (r"\boxed{071}", "70"), (r"\boxed{\sqrt{640}}", "8\\sqrt{10}")] * 1000
    pairs += [("The final answer is $70$.", "70")] * 500  # another text with the same answer
    with Grader("strict", workers=1) as grader:
        verdicts = grader.grade_batch(pairs)
        assert verdicts[:3] == [True, False, True] and verdicts[-1] is True
        distinct = grader.stats.fast + grader.stats.symbolic
        assert distinct == 3
        assert grader.stats.cache_hits == len(pairs) - 3
        grader.grade_batch(pairs[:10])
        assert grader.stats.fast + grader.stats.symbolic == distinct
        assert grader.stats.gradings == len(pairs) + 10


def test_module_level_functions() -> None:
    assert is_equivalent("\\frac{3}{4}", "0.75")
    assert not is_equivalent("3300", "33")
    assert is_equivalent("3300", "33", mode="limo")
    assert grade(r"so \boxed{033}", "33")
    assert not grade("no answer here", "33")
    assert grade_batch([(r"\boxed{B}", "B"), (r"\boxed{A}", "B")]) == [True, False]


def test_unknown_mode_is_rejected() -> None:
    with pytest.raises(ValueError):
        Grader("lenient")
    with pytest.raises(ValueError):
        is_equivalent("1", "1", mode="exact")


def test_import_does_not_load_sympy() -> None:
    code = "import sys, fathom_jobs.grading; print('sympy' in sys.modules or 'math_verify' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
