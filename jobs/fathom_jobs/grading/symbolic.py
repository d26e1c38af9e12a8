"""The slow path: sympy / math-verify equality, run only inside worker processes.

Imported by ``pool.py``'s workers; sympy, latex2sympy2_extended and math_verify are
imported inside the functions so that importing ``fathom_jobs.grading`` stays cheap.

Both modes re-run their full comparison here (``strict_equal`` / ``limo_equal``) with a
real ``symbolic`` callable instead of the main process's ``NeedsSymbolic`` stand-in. Each
sympy call gets a soft deadline (SIGALRM; the worker runs tasks on its main thread) so a
slow call counts as "not equal" and the comparison goes on, as LIMO's 3 s
``call_with_timeout`` does. Computations stuck inside one C call (a 10^(10^10) integer)
ignore signals; for those the pool kills the worker at the hard per-item deadline.
"""

from __future__ import annotations

import re
import signal
import time
from contextlib import contextmanager

__all__ = ["evaluate_pair", "warm_up", "strict_symbolic_equal", "limo_symbolic_equal", "sympy_parse_latex_usable"]

LIMO_SYMBOLIC_TIMEOUT_S = 3.0  # LIMO's call_with_timeout(timeout=3)


class SoftTimeout(BaseException):
    """BaseException so that sympy's and math-verify's ``except Exception`` cannot swallow it."""


class _Budget:
    """Time left for the current item and the soft timeouts spent so far."""

    deadline = float("inf")
    soft_timeouts = 0


_budget = _Budget()


def _on_alarm(signum, frame):
    raise SoftTimeout


@contextmanager
def _soft_deadline(seconds: float):
    seconds = min(seconds, _budget.deadline - time.monotonic())
    if seconds <= 0:
        raise SoftTimeout
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def warm_up() -> None:
    """Import and exercise the heavy parsers once, so the first real item is not slow."""
    import logging

    import math_verify
    import sympy  # noqa: F401

    # math-verify warns that its own signal timeouts are off: ours (pool.py) replace them.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    from latex2sympy2_extended import latex2sympy

    latex2sympy(r"\frac{1}{2}+\sqrt{2}")
    sympy_parse_latex_usable()
    math_verify.verify(
        math_verify.parse("$x+1$", parsing_timeout=None),
        math_verify.parse("$1+x$", parsing_timeout=None),
        timeout_seconds=None,
    )


# ------------------------------------------------------------------ strict


_DECIMAL = re.compile(r"(?<![\d.])(\d+)\.(\d+)(?![\d.])")


def _exact_decimals(latex: str) -> str:
    """Written decimals as the fractions they denote ("0.75" -> "\\frac{75}{100}"):
    strict mode treats a decimal as an exact value, math-verify would round floats."""
    return _DECIMAL.sub(lambda m: f"\\frac{{{int(m.group(1) + m.group(2))}}}{{1{'0' * len(m.group(2))}}}", latex)


def strict_symbolic_equal(prediction: str, gold: str) -> bool:
    """math-verify equality of two normalised scalar answers, decimals read exactly."""
    import math_verify

    try:
        with _soft_deadline(_budget.deadline - time.monotonic()):
            gold_parsed = math_verify.parse(f"${_exact_decimals(gold)}$", parsing_timeout=None)
            pred_parsed = math_verify.parse(f"${_exact_decimals(prediction)}$", parsing_timeout=None)
            if not gold_parsed or not pred_parsed:
                return False
            return bool(
                math_verify.verify(
                    gold_parsed, pred_parsed, float_rounding=12, numeric_precision=15, strict=True,
                    timeout_seconds=None,
                )
            )
    except SoftTimeout:
        _budget.soft_timeouts += 1
        return False


# ------------------------------------------------------------------ LIMO

# parse_expr evaluates Python; LIMO feeds it model output unguarded. Only arithmetic
# over names and numbers is allowed through here (no attributes, no dunders, no calls
# of anything but simple names).
_SAFE_PYTHON_EXPR = re.compile(r"^[\w\s+\-*/^().,!<>=]*$")


def _safe_parse_expr(text: str):
    from sympy.parsing.sympy_parser import parse_expr

    if not _SAFE_PYTHON_EXPR.match(text) or "__" in text or re.search(r"[A-Za-z_]\s*\.", text):
        raise ValueError("not a plain arithmetic expression")
    if re.search(r"\*\*|\^", text) and len(text) > 200:
        raise ValueError("long power expression")
    return parse_expr(text)


_parse_latex_usable: bool | None = None


def sympy_parse_latex_usable() -> bool:
    """Whether sympy's ``parse_latex`` works here: it needs antlr4-python3-runtime 4.11
    (``math-verify[antlr4_11_0]``); under 4.13 every call raises ImportError."""
    global _parse_latex_usable
    if _parse_latex_usable is None:
        try:
            from sympy.parsing.latex import parse_latex

            parse_latex("1")
            _parse_latex_usable = True
        except Exception:
            _parse_latex_usable = False
    return _parse_latex_usable


def _limo_parse(text: str):
    # LIMO tries sympy's parse_latex, parse_expr, latex2sympy in turn, each first on the
    # text with "\\" turned into "\"; unparseable text stays a string. parse_latex's
    # quirks shape LIMO's verdicts (it stops at a comma, so "1, 2" reads as 1; \pi is a
    # plain symbol), so it is used whenever antlr 4.11 is installed. Otherwise
    # latex2sympy2_extended - the maintained version of LIMO's third parser - stands in
    # for it: the two agree on ordinary answers but not on those quirks.
    from latex2sympy2_extended import latex2sympy

    if sympy_parse_latex_usable():
        from sympy.parsing.latex import parse_latex

        parsers = (parse_latex, _safe_parse_expr, latex2sympy)
    else:
        parsers = (latex2sympy, _safe_parse_expr)
    for parse in parsers:
        for candidate in (text.replace("\\\\", "\\"), text):
            try:
                return parse(candidate)
            except SoftTimeout:
                raise
            except Exception:
                continue
    return text


def _limo_symbolic_equal_unbounded(a_text: str, b_text: str) -> bool:
    from sympy import N, simplify

    from fathom_jobs.grading.limo import limo_numeric_equal

    a, b = _limo_parse(a_text), _limo_parse(b_text)
    checks = (
        lambda: str(a) == str(b) or a == b,
        lambda: a.equals(b) or simplify(a - b) == 0,
        lambda: abs(a.lhs - a.rhs).equals(abs(b.lhs - b.rhs)),
        lambda: limo_numeric_equal(float(N(a)), float(N(b))),
        lambda: a.shape == b.shape
        and a.applyfunc(lambda x: round(x, 3)).equals(b.applyfunc(lambda x: round(x, 3))),
    )
    for check in checks:
        try:
            if check():
                return True
        except SoftTimeout:
            raise
        except Exception:
            continue
    return False


def limo_symbolic_equal(a_text: str, b_text: str) -> bool:
    """LIMO ``symbolic_equal`` under its 3 s timeout (a timeout is "not equal"). LIMO's
    equation step calls it without one; here every call gets the 3 s, which can only turn
    a hang into "not equal"."""
    try:
        with _soft_deadline(LIMO_SYMBOLIC_TIMEOUT_S):
            return _limo_symbolic_equal_unbounded(a_text, b_text)
    except SoftTimeout:
        _budget.soft_timeouts += 1
        return False


# ------------------------------------------------------------------ entry point


def evaluate_pair(mode: str, prediction: str, gold: str, budget_s: float, fast_paths: bool = True) -> tuple[bool, int]:
    """Full comparison of one pair of canonical answers (``normalize`` output for strict,
    ``limo_strip_string`` output for limo) with symbolic checks enabled.

    ``fast_paths=False`` turns off strict mode's numeric shortcut so that sympy decides
    every scalar. Returns (verdict, soft timeouts hit). Runs in a worker process."""
    from fathom_jobs.grading.limo import limo_math_equal
    from fathom_jobs.grading.strict import strict_equal_normalized

    _budget.deadline = time.monotonic() + budget_s
    _budget.soft_timeouts = 0
    try:
        if mode == "limo":
            verdict = limo_math_equal(prediction, gold, limo_symbolic_equal)
        else:
            verdict = strict_equal_normalized(prediction, gold, strict_symbolic_equal, numeric=fast_paths)
    except SoftTimeout:
        _budget.soft_timeouts += 1
        verdict = False
    except RecursionError:
        verdict = False
    finally:
        _budget.deadline = float("inf")
    return bool(verdict), _budget.soft_timeouts
