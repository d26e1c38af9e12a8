"""Answer extraction and equivalence for math (and multiple-choice) answers.

Two modes:

- ``"strict"`` (default; training rewards, solve rates): values must be mathematically
  equal; integers exactly; no percentage x100 / /100 variants. See ``strict.py``.
- ``"limo"``: the LIMO evaluation's ``math_equal`` (Qwen2.5-Math lineage), with which the
  Fathom-R1 seeds' published tables were scored. See ``limo.py``.

Typical use::

    from fathom_jobs.grading import Grader

    with Grader("strict", timeout_s=5) as grader:
        rewards = grader.grade_batch(zip(responses, golds))
        print(grader.stats)

sympy and math-verify are imported only in worker processes, and only when a pair
needs them; importing this package is cheap.
"""

from fathom_jobs.grading.extraction import ExtractOptions, choice_letter, extract_answer, extract_boxed, extract_choice
from fathom_jobs.grading.grader import (
    MODES,
    Grader,
    GradingStats,
    default_grader,
    grade,
    grade_batch,
    is_equivalent,
)
from fathom_jobs.grading.limo_text import limo_extract_answer, limo_strip_string
from fathom_jobs.grading.normalize import normalize

__all__ = [
    "MODES",
    "ExtractOptions",
    "Grader",
    "GradingStats",
    "choice_letter",
    "default_grader",
    "extract_answer",
    "extract_boxed",
    "extract_choice",
    "grade",
    "grade_batch",
    "is_equivalent",
    "limo_extract_answer",
    "limo_strip_string",
    "normalize",
]
