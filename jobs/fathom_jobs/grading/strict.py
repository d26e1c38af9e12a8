"""``mode="strict"``: the equivalence used for training rewards and solve rates.

Values must be mathematically equal. An integer gold answer (every AIME answer) accepts
only exactly that integer - "33", "033", "33.0", "\\frac{66}{2}" - never x100 or /100
variants, never a rounded or near value. Other answers must be equal as numbers or as
expressions; floating point serves only as a fast proxy for symbolic equality, at a
relative tolerance of 1e-12 (far below any rounding a model writes), so "0.3333" is not
1/3 here (it is in ``mode="limo"``).

Structures compare element by element: tuples and intervals in order with identical
bracket characters (so "[1,2)" is not "(1,2)"), sets and bare lists ("1, 2") in any
order, "x=1, y=2" against "(1, 2)" in order, "x=5" against "5" by its right-hand side.
A gold answer that is a single capital letter A-J is a multiple-choice option.

Every comparison the fast paths cannot settle goes to ``symbolic`` - a callable
``(prediction, gold) -> bool``. In the main process that callable raises
``NeedsSymbolic`` and the whole pair is re-run in a worker process whose ``symbolic``
uses math-verify/sympy under a timeout (see ``symbolic.py`` and ``pool.py``).
"""

from __future__ import annotations

from collections.abc import Callable

from fathom_jobs.grading.extraction import choice_letter
from fathom_jobs.grading.latex_eval import Number, evaluate
from fathom_jobs.grading.normalize import Structure, mixed_number, normalize, parse_structure

__all__ = ["NeedsSymbolic", "strict_equal", "strict_equal_normalized", "decide_numbers", "defer"]

SymbolicCheck = Callable[[str, str], bool]

# Floats within this relative distance are the same number (evaluation noise is ~1e-15).
_SAME = 1e-12
# Floats further apart than this are certainly different numbers.
_DIFFERENT = 1e-9
_CHOICE_LETTERS = "ABCDEFGHIJ"


class NeedsSymbolic(Exception):
    """Raised by the main process's ``symbolic`` stand-in: the pair needs the worker pool."""


def defer(prediction: str, gold: str) -> bool:
    raise NeedsSymbolic


def decide_numbers(pred: Number, gold: Number) -> bool | None:
    """Strict verdict for two evaluated constants, or None when only sympy can tell."""
    if pred.exact and gold.exact:
        return pred.value == gold.value
    p, g = float(pred.value), float(gold.value)
    scale = max(1.0, abs(p), abs(g), pred.scale, gold.scale)
    difference = abs(p - g)
    if difference > _DIFFERENT * scale:
        return False
    if difference <= _SAME * scale and not pred.exact and not gold.exact:
        return True  # e.g. 9\sqrt{15} and \sqrt{1215}
    return None  # an exact number against a radical expression that is very close to it


_INFINITIES = frozenset({"\\infty", "-\\infty"})


def _value(text: str) -> Number | None:
    improper = mixed_number(text)
    return evaluate(improper if improper is not None else text)


class _Comparison:
    """One strict comparison: the ``symbolic`` fallback and whether the numeric fast path
    may settle scalars first (``numeric=False`` leaves every non-identical scalar to
    ``symbolic``; tests use it to check the two agree)."""

    def __init__(self, symbolic: SymbolicCheck, numeric: bool = True):
        self.symbolic = symbolic
        self.numeric = numeric

    def scalar(self, pred: str, gold: str) -> bool:
        if pred == gold:
            return True
        if pred in _INFINITIES or gold in _INFINITIES:
            return False
        if self.numeric:
            gold_value = _value(gold)
            if gold_value is not None:
                pred_value = _value(pred)
                if pred_value is not None:
                    verdict = decide_numbers(pred_value, gold_value)
                    if verdict is not None:
                        return verdict
        return self.symbolic(pred, gold)

    def in_order(self, preds: tuple[str, ...], golds: tuple[str, ...]) -> bool:
        return len(preds) == len(golds) and all(self.scalar(p, g) for p, g in zip(preds, golds))

    def any_order(self, preds: tuple[str, ...], golds: tuple[str, ...], element=None) -> bool:
        if len(preds) != len(golds):
            return False
        element = element or self.scalar
        remaining = list(preds)
        # Equality is transitive, so matching each gold to the first equal prediction is exact.
        for gold in golds:
            for i, pred in enumerate(remaining):
                if element(pred, gold):
                    del remaining[i]
                    break
            else:
                return False
        return True

    def interval(self, pred: str, gold: str) -> bool:
        return self.structure(parse_structure(pred), parse_structure(gold))

    def structure(self, pred: Structure, gold: Structure) -> bool:
        kind = gold.kind
        if kind == "text":
            return pred.kind == "text" and pred.items == gold.items
        if kind == "scalar":
            if pred.kind == "scalar" or (pred.kind == "assign" and len(pred.items) == 1):
                return self.scalar(pred.items[0], gold.items[0])
            return False
        if kind == "assign":
            return self.assignments(pred, gold)
        if kind == "bracketed":
            if pred.kind == "bracketed":
                return pred.brackets == gold.brackets and self.in_order(pred.items, gold.items)
            if pred.kind == "assign" and gold.brackets == "()":
                return self.in_order(pred.items, gold.items)
            return False
        if kind in ("set", "list"):
            if pred.kind in ("set", "list") or (pred.kind == "assign" and len(set(pred.names)) == 1):
                return self.any_order(pred.items, gold.items)
            return False
        if kind == "union":
            return pred.kind == "union" and self.any_order(pred.items, gold.items, element=self.interval)
        if kind == "matrix":
            if pred.kind != "matrix" or len(pred.items) != len(gold.items):
                return False
            return all(
                self.in_order(tuple(c.strip() for c in p.split("&")), tuple(c.strip() for c in g.split("&")))
                for p, g in zip(pred.items, gold.items)
            )
        raise ValueError(f"unknown structure {kind!r}")

    def assignments(self, pred: Structure, gold: Structure) -> bool:
        distinct_names = len(set(gold.names)) == len(gold.names)
        if pred.kind == "assign":
            if len(gold.items) > 1 and distinct_names and set(pred.names) == set(gold.names):
                by_name = dict(zip(pred.names, pred.items))
                return all(self.scalar(by_name[n], v) for n, v in zip(gold.names, gold.items))
            if not distinct_names:  # "x=1, x=2": the solutions, in any order
                return self.any_order(pred.items, gold.items)
            return self.in_order(pred.items, gold.items)  # "x=5" vs "k=5": the right-hand sides
        if len(gold.items) == 1 and pred.kind == "scalar":
            return self.scalar(pred.items[0], gold.items[0])
        if pred.kind == "bracketed" and pred.brackets == "()":
            return self.in_order(pred.items, gold.items)
        if pred.kind in ("list", "set"):
            return self.any_order(pred.items, gold.items)
        return False


def strict_equal(prediction: str, gold: str, symbolic: SymbolicCheck = defer) -> bool:
    """Strict equivalence of an extracted prediction and a gold answer."""
    return strict_equal_normalized(normalize(prediction), normalize(gold), symbolic)


def strict_equal_normalized(pred: str, ref: str, symbolic: SymbolicCheck = defer, numeric: bool = True) -> bool:
    """``strict_equal`` of two answers already passed through ``normalize``."""
    if not pred or not ref:
        return False
    if pred == ref:
        return True
    if len(ref) == 1 and ref in _CHOICE_LETTERS:
        return choice_letter(pred, _CHOICE_LETTERS) == ref
    return _Comparison(symbolic, numeric).structure(parse_structure(pred), parse_structure(ref))
