"""``mode="limo"``: the equivalence the Fathom-R1 seeds' published numbers were scored with.

Reproduces ``check_is_correct`` / ``math_equal`` of GAIR-NLP/LIMO ``eval/utils/grader.py``
(read from the copy in tossowski/LIMO ``eval/utils/grader.py``; the same file is vendored in
microsoft/SeerAttention ``eval/reasoning_tasks/Utils/grader.py``). LIMO extends
QwenLM/Qwen2.5-Math ``evaluation/grader.py`` ``math_equal``; its semantics, in order:
exact (case-insensitive) string match; option letters A-E (``choice_answer_clean``) and
"(A) ..." / "A. ..." prefixes; comma-separated answers compared element-wise after sorting
both sides as strings; numbers with ``include_percentage`` (gold, gold/100 and gold*100 are
all accepted) and ``is_close`` - note LIMO's ``numeric_equal`` uses ``abs_tol=1e-4``
(Qwen2.5-Math's uses ``rel_tol=1e-4``); bracket-stripped string match; ordered
tuples/lists; pmatrix/bmatrix element-wise; equations (``a=b`` vs ``c=d`` as
``a-(b)`` = +-(``c-(d)``)), ``x=5`` vs ``5``; finally sympy ``symbolic_equal`` (parse, ==,
``equals``/``simplify``, equation sides, numeric with abs_tol 1e-4, matrices rounded to 3
places). Recursion is capped at depth 5, as in LIMO.

The sympy part runs in a worker process (``symbolic.limo_symbolic_equal``). In the main
process the ``symbolic`` callable first tries ``limo_fast_symbolic``: for constants inside
the evaluator's subset it reproduces ``symbolic_equal``'s numeric verdict exactly
(``numeric_equal(float(N(a)), float(N(b)))`` with abs_tol 1e-4) and otherwise raises
``NeedsSymbolic``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from fathom_jobs.grading.latex_eval import evaluate
from fathom_jobs.grading.limo_text import limo_choice_answer_clean, limo_strip_string
from fathom_jobs.grading.strict import NeedsSymbolic

__all__ = ["limo_equal", "limo_math_equal", "limo_fast_symbolic", "limo_numeric_equal"]

SymbolicCheck = Callable[[str, str], bool]

_SINGLE_CHOICE_PATTERNS = [
    re.compile(p)
    for letter in "ABCDE"
    for p in (rf"^\({letter}\)", rf"^{letter}\.", rf"^{letter}\)", rf"^\*\*{letter}\*\*", rf"^{letter}:")
]
# LIMO's list order is grouped by pattern shape, then letter; the order does not change the
# verdict (every match is tried), only which recursion happens first.
_LIST_PREFIX = re.compile(r"(\(|\[).+(\)|\])")
_MATRIX_PREFIXES = ("\\begin{pmatrix}", "\\begin{bmatrix}")
_MATRIX_SUFFIXES = ("\\end{pmatrix}", "\\end{bmatrix}")


def limo_numeric_equal(prediction: float, reference: float) -> bool:
    return math.isclose(reference, prediction, abs_tol=1e-4)


def _parse_digits(text: str) -> float | None:
    text = text.replace(",", "")
    try:
        return float(text)
    except ValueError:
        if text.endswith("%"):
            text = text[:-1]
            if text.endswith("\\"):
                text = text[:-1]
            try:
                return float(text) / 100
            except ValueError:
                pass
    return None


def _str_to_pmatrix(text: str) -> str:
    matrices = re.findall(r"\{.*,.*\}", text.strip())
    return ", ".join(
        r"\begin{pmatrix}" + m.strip("{}").replace(",", "\\") + r"\end{pmatrix}" for m in matrices
    )


def _is_matrix(text: str) -> bool:
    return text.startswith(_MATRIX_PREFIXES) and text.endswith(_MATRIX_SUFFIXES)


def _matrix_rows(text: str) -> list[str]:
    inner = text[len("\\begin{pmatrix}") : -len("\\end{pmatrix}")]
    return [line.strip() for line in inner.split("\\\\") if line.strip()]


def limo_math_equal(
    prediction: str,
    reference: str,
    symbolic: SymbolicCheck,
    include_percentage: bool = True,
    is_close: bool = True,
    depth: int = 0,
    max_depth: int = 5,
) -> bool:
    """LIMO ``math_equal`` (see the module docstring), ``symbolic`` standing for its
    ``symbolic_equal`` (called under LIMO's 3 s timeout in the final step)."""
    if depth > max_depth or prediction is None or reference is None:
        return False

    def recurse(pred: str, ref: str) -> bool:
        return limo_math_equal(pred, ref, symbolic, include_percentage, is_close, depth + 1, max_depth)

    if prediction.strip().lower() == reference.strip().lower():
        return True
    if reference in ("A", "B", "C", "D", "E") and limo_choice_answer_clean(prediction) == reference:
        return True
    for pattern in _SINGLE_CHOICE_PATTERNS:
        if pattern.match(prediction) and recurse(pattern.sub("", prediction, count=1).strip(), reference):
            return True
    if "," in prediction and "," in reference:
        pred_parts = sorted(part.strip() for part in prediction.split(","))
        ref_parts = sorted(part.strip() for part in reference.split(","))
        if len(pred_parts) == len(ref_parts) and all(recurse(p, r) for p, r in zip(pred_parts, ref_parts)):
            return True
    pred_number, ref_number = _parse_digits(prediction), _parse_digits(reference)
    if pred_number is not None and ref_number is not None:
        candidates = [ref_number / 100, ref_number, ref_number * 100] if include_percentage else [ref_number]
        for candidate in candidates:
            if is_close and limo_numeric_equal(pred_number, candidate):
                return True
            if not is_close and candidate == pred_number:
                return True
        return False
    if not prediction:
        return False
    reference, prediction = reference.strip(), prediction.strip()
    if "pmatrix" in prediction and "pmatrix" not in reference:
        reference = _str_to_pmatrix(reference)
    pred_str, ref_str = prediction, reference
    if (prediction.startswith("[") and prediction.endswith("]") and not reference.startswith("(")) or (
        prediction.startswith("(") and prediction.endswith(")") and not reference.startswith("[")
    ):
        pred_str, ref_str = pred_str.strip("[]()"), ref_str.strip("[]()")
    for bracket in "{}()":
        ref_str, pred_str = ref_str.replace(bracket, ""), pred_str.replace(bracket, "")
    if pred_str.lower() == ref_str.lower():
        return True
    if _LIST_PREFIX.match(prediction) and _LIST_PREFIX.match(reference):
        pred_parts, ref_parts = prediction[1:-1].split(","), reference[1:-1].split(",")
        if len(pred_parts) == len(ref_parts) and all(recurse(p, r) for p, r in zip(pred_parts, ref_parts)):
            return True
    if _is_matrix(prediction) and _is_matrix(reference):
        pred_lines, ref_lines = _matrix_rows(prediction), _matrix_rows(reference)
        matched = len(pred_lines) == len(ref_lines)
        for pred_line, ref_line in zip(pred_lines, ref_lines) if matched else ():
            pred_cells, ref_cells = pred_line.split("&"), ref_line.split("&")
            if len(pred_cells) != len(ref_cells) or not all(recurse(p, r) for p, r in zip(pred_cells, ref_cells)):
                matched = False
                break
        if matched:
            return True
    if prediction.count("=") == 1 and reference.count("=") == 1:
        lhs, rhs = prediction.split("=")
        pred_eq = f"{lhs.strip()} - ({rhs.strip()})"
        lhs, rhs = reference.split("=")
        ref_eq = f"{lhs.strip()} - ({rhs.strip()})"
        if symbolic(pred_eq, ref_eq) or symbolic(f"-({pred_eq})", ref_eq):
            return True
    elif prediction.count("=") == 1 and len(prediction.split("=")[0].strip()) <= 2 and "=" not in reference:
        if recurse(prediction.split("=")[1], reference):
            return True
    elif reference.count("=") == 1 and len(reference.split("=")[0].strip()) <= 2 and "=" not in prediction:
        if recurse(prediction, reference.split("=")[1]):
            return True
    return symbolic(prediction, reference)


def limo_equal(prediction: str, gold: str, symbolic: SymbolicCheck) -> bool:
    """LIMO ``check_is_correct``: ``math_equal(strip_string(pred), strip_string(gold))``."""
    return limo_math_equal(limo_strip_string(prediction), limo_strip_string(gold), symbolic)


# The fast path's margin around abs_tol 1e-4: float evaluation noise of the two routes.
_LIMO_MARGIN = 1e-9


def limo_fast_symbolic(prediction: str, reference: str) -> bool:
    """Main-process stand-in for LIMO ``symbolic_equal``: the verdict for two constants the
    evaluator reads exactly as latex2sympy does, else ``NeedsSymbolic``.

    For such constants ``symbolic_equal`` is True exactly when the values agree within
    abs_tol 1e-4 (its ``==``/``simplify`` steps only succeed for equal values, which also
    pass its numeric step). Values within a hair of the threshold still go to sympy, as
    does anything the evaluator might read differently from ``parse_latex``."""
    pred, ref = evaluate(prediction, limo=True), evaluate(reference, limo=True)
    if pred is None or ref is None:
        raise NeedsSymbolic
    try:
        difference = abs(float(pred.value) - float(ref.value))
    except OverflowError:
        raise NeedsSymbolic from None
    magnitude = max(abs(float(pred.value)), abs(float(ref.value)))
    # math.isclose(ref, pred, abs_tol=1e-4) keeps its default rel_tol=1e-9 as well.
    tolerance = max(1e-9 * magnitude, 1e-4)
    margin = _LIMO_MARGIN * max(1.0, pred.scale, ref.scale, magnitude)
    if difference <= tolerance - margin:
        return True
    if difference > tolerance + margin:
        return False
    raise NeedsSymbolic
