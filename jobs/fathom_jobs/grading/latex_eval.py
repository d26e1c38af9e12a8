"""A small evaluator for constant LaTeX answers: the grader's fast numeric path.

Most answers are constants ("70", "\\frac{9\\sqrt{23}}{23}", "2^{25} \\cdot 26!"). Parsing
them with sympy costs milliseconds; this evaluator costs microseconds. It computes with
exact fractions wherever the value is rational and falls back to floats for radicals and
pi, recording how large the intermediate values got (``scale``) so callers can tell float
noise from a real difference. Anything it does not understand - variables, functions,
complex values, numbers too large to compute quickly (``10^{10^{10}}``) - makes it return
None, and the caller sends the pair to the symbolic path instead.

Grammar (the subset where sympy's LaTeX parsers read the same value): numbers, ``+ -``,
``* \\cdot \\times / \\div``, implicit multiplication (``2\\sqrt{3}``, ``3\\pi``), ``^``,
``!``, ``\\frac``, ``\\sqrt``, ``\\sqrt[n]``, ``\\binom``, ``\\pi``, ``( )``, and ``{ }``
as command arguments and exponents (a bare ``{12}`` is a set to latex2sympy).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

__all__ = ["Number", "evaluate"]

# Exact results beyond this many bits are left to the symbolic path (and its timeout).
_MAX_EXACT_BITS = 20_000
_MAX_FACTORIAL = 2_000


@dataclass(frozen=True)
class Number:
    """An evaluated constant: exact (``Fraction``) or approximate (``float``)."""

    value: Fraction | float
    scale: float  # largest magnitude met while computing an approximate value; 0 if exact

    @property
    def exact(self) -> bool:
        return isinstance(self.value, Fraction)

    @property
    def is_integer(self) -> bool:
        return isinstance(self.value, Fraction) and self.value.denominator == 1


class _Unsupported(Exception):
    pass


_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d+)?|\.\d+)|(\\[a-zA-Z]+)|(\S))")
_ATOM_START_COMMANDS = frozenset({"\\frac", "\\sqrt", "\\pi", "\\binom"})
_MULTIPLY = frozenset({"*", "\\cdot", "\\times"})
_DIVIDE = frozenset({"/", "\\div"})
_SKIPPED = frozenset({"\\left", "\\right", "\\displaystyle"})


def _tokenize(text: str, skip_layout: bool) -> list[tuple[str, str]]:
    tokens = []
    pos = 0
    n = len(text)
    while pos < n:
        match = _TOKEN.match(text, pos)
        if not match:
            if text[pos:].strip():
                raise _Unsupported
            break
        pos = match.end()
        number, command, char = match.groups()
        if number is not None:
            tokens.append(("num", number))
        elif command is not None:
            if command in _SKIPPED:
                if not skip_layout:
                    raise _Unsupported
            else:
                tokens.append(("cmd", command))
        else:
            tokens.append(("chr", char))
    return tokens


def _bits(value: Fraction) -> int:
    return max(value.numerator.bit_length(), value.denominator.bit_length())


def _exact_root(value: Fraction, n: int) -> Fraction | None:
    """The exact n-th root of a non-negative rational, when it is rational."""

    def int_root(k: int) -> int | None:
        if k < 2:
            return k
        r = round(k ** (1.0 / n)) if k.bit_length() < 1000 else None
        if r is None:
            return None
        for cand in (r - 1, r, r + 1):
            if cand >= 0 and cand**n == k:
                return cand
        return None

    num, den = int_root(value.numerator), int_root(value.denominator)
    if num is None or den is None:
        return None
    return Fraction(num, den)


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]], pi: bool):
        self.tokens = tokens
        self.pi = pi
        self.pos = 0
        self.scale = 0.0

    # -- token helpers
    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise _Unsupported
        self.pos += 1
        return token

    def expect(self, text: str) -> None:
        if self.take()[1] != text:
            raise _Unsupported

    # -- arithmetic with exact/float bookkeeping
    def approx(self, *values: Fraction | float) -> None:
        for v in values:
            try:
                self.scale = max(self.scale, abs(float(v)))
            except OverflowError:
                raise _Unsupported from None

    def floated(self, value: float) -> float:
        if math.isnan(value) or math.isinf(value):
            raise _Unsupported
        self.approx(value)
        return value

    def add(self, a, b, sign: int):
        if isinstance(a, Fraction) and isinstance(b, Fraction):
            return a + b if sign > 0 else a - b
        self.approx(a, b)
        return self.floated(float(a) + sign * float(b))

    def mul(self, a, b):
        if isinstance(a, Fraction) and isinstance(b, Fraction):
            if _bits(a) + _bits(b) > _MAX_EXACT_BITS:
                raise _Unsupported
            return a * b
        self.approx(a, b)
        return self.floated(float(a) * float(b))

    def div(self, a, b):
        if b == 0:
            raise _Unsupported
        if isinstance(a, Fraction) and isinstance(b, Fraction):
            return a / b
        self.approx(a, b)
        return self.floated(float(a) / float(b))

    def power(self, base, exponent):
        if isinstance(exponent, Fraction) and isinstance(base, Fraction):
            if exponent.denominator == 1:
                e = exponent.numerator
                if base == 0 and e < 0:
                    raise _Unsupported
                if base in (0, 1) or e == 0:
                    return base**e
                if abs(e) * _bits(base) > _MAX_EXACT_BITS:
                    raise _Unsupported
                return base**e
            if base < 0:
                raise _Unsupported  # sympy reads (-8)^{1/3} as a complex principal root
            root = _exact_root(base, exponent.denominator)
            if root is not None:
                return self.power(root, Fraction(exponent.numerator))
        if float(base) < 0 and not (isinstance(exponent, Fraction) and exponent.denominator == 1):
            raise _Unsupported
        self.approx(base, exponent)
        try:
            return self.floated(float(base) ** float(exponent))
        except (OverflowError, ZeroDivisionError):
            raise _Unsupported from None

    def root(self, value, n: int):
        if n < 1 or float(value) < 0:
            raise _Unsupported
        if isinstance(value, Fraction):
            exact = _exact_root(value, n)
            if exact is not None:
                return exact
        self.approx(value)
        return self.floated(float(value) ** (1.0 / n))

    # -- grammar
    def parse(self):
        value = self.expression()
        if self.peek() is not None:
            raise _Unsupported
        return value

    def expression(self):
        value = self.signed()
        while (token := self.peek()) is not None and token[1] in ("+", "-"):
            self.take()
            value = self.add(value, self.signed(), 1 if token[1] == "+" else -1)
        return value

    def signed(self):
        token = self.peek()
        if token is not None and token[1] in ("+", "-"):
            self.take()
            value = self.signed()
            return value if token[1] == "+" else self.mul(Fraction(-1), value)
        return self.term()

    def term(self):
        value = self.power_expr()
        while (token := self.peek()) is not None:
            kind, text = token
            if text in _MULTIPLY:
                self.take()
                value = self.mul(value, self.power_expr())
            elif text in _DIVIDE:
                self.take()
                value = self.div(value, self.power_expr())
            elif kind == "cmd" and text in _ATOM_START_COMMANDS:
                # Implicit product: 2\sqrt{3}, 3\pi. Not "2\frac{1}{2}" (a mixed number to
                # some parsers) nor "2(5)" (a function call to latex2sympy): those are
                # left to the symbolic path, so both paths read them the same way.
                if text == "\\frac" and self.tokens[self.pos - 1][0] == "num":
                    raise _Unsupported
                value = self.mul(value, self.power_expr())
            else:
                break
        return value

    def power_expr(self):
        base = self.postfix()
        token = self.peek()
        if token is not None and token[1] == "^":
            self.take()
            exponent_token = self.peek()
            if exponent_token is not None and exponent_token[1] in ("-", "+"):
                exponent = self.signed()  # "2^-1": sign then its operand
            elif exponent_token is not None and exponent_token[1] == "{":
                exponent = self.group()
            else:
                exponent = self.power_expr()  # right-associative
            return self.power(base, exponent)
        return base

    def postfix(self):
        value = self.atom()
        while (token := self.peek()) is not None and token[1] == "!":
            self.take()
            if not isinstance(value, Fraction) or value.denominator != 1 or not 0 <= value <= _MAX_FACTORIAL:
                raise _Unsupported
            value = Fraction(math.factorial(int(value)))
        return value

    def group(self):
        self.expect("{")
        value = self.expression()
        self.expect("}")
        return value

    def atom(self):
        kind, text = self.take()
        if kind == "num":
            return Fraction(text)
        if text == "(":
            value = self.expression()
            self.expect(")")
            return value
        if text == "\\frac":
            numerator = self.group()
            return self.div(numerator, self.group())
        if text == "\\binom":
            n, k = self.group(), self.group()
            if not all(isinstance(v, Fraction) and v.denominator == 1 for v in (n, k)) or not 0 <= k <= n <= 10_000:
                raise _Unsupported
            return Fraction(math.comb(int(n), int(k)))
        if text == "\\sqrt":
            degree = 2
            if self.peek() is not None and self.peek()[1] == "[":
                self.take()
                index = self.expression()
                self.expect("]")
                if not isinstance(index, Fraction) or index.denominator != 1:
                    raise _Unsupported
                degree = int(index)
            return self.root(self.group(), degree)
        if text == "\\pi" and self.pi:
            return self.floated(math.pi)
        raise _Unsupported


_PERFORMANCE_GUARD = 400  # longer answers are rare and go to the symbolic path


def evaluate(text: str, *, limo: bool = False) -> Number | None:
    """The value of a constant LaTeX expression, or None if outside the supported subset.

    ``limo=True`` reads like sympy's ``parse_latex`` (LIMO's first parser): ``\\pi`` is
    the symbol pi there, not the constant, and ``\\left``/``\\displaystyle`` are not
    layout, so expressions holding them are declined."""
    if not text or len(text) > _PERFORMANCE_GUARD:
        return None
    try:
        parser = _Parser(_tokenize(text, skip_layout=not limo), pi=not limo)
        if not parser.tokens:
            return None
        value = parser.parse()
    except (_Unsupported, RecursionError, ValueError, ZeroDivisionError, OverflowError):
        return None
    return Number(value, parser.scale if isinstance(value, float) else 0.0)
