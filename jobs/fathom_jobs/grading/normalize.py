"""Answer normalisation and structure for ``mode="strict"``.

``normalize`` turns the many ways of writing one answer into one string: LaTeX spacing
and sizing commands, ``\\dfrac``/``\\tfrac``, ``\\text{}``/``\\mbox{}`` wrappers, trailing
units, degree signs, percent signs, currency, thousands separators ("1,000"), a trailing
period. It does not change values: "50\\%" becomes "50", never "0.5" (strict mode
accepts no x100 / /100 variants).

``parse_structure`` then says what kind of answer the string is - a scalar, a tuple or
interval (bracket characters kept, so open/closed must match), a set, an unordered list
("1, 2"), a union of intervals, a matrix, assignments ("x=1, y=2"), plain text - so
the comparator can compare element by element.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Structure", "normalize", "parse_structure", "split_top_level", "mixed_number"]

_UNIT_WORDS = (
    "degrees?", "radians?", "percent", "dollars?", "cents?", "units?", "sq(?:uare)?",
    "cubic", "centimeters?", "meters?", "metres?", "kilometers?", "millimeters?", "cm",
    "mm", "km", "inches", "inch", "feet", "foot", "ft", "yards?", "miles?",
    "mph", "km/h", "hours?", "hrs?", "minutes?", "mins?", "seconds?", "secs?", "days?",
    "weeks?", "months?", "years?", "grams?", "kilograms?", "kg", "pounds?", "lbs?",
    "ounces?", "oz", "liters?", "litres?", "ml", "gallons?", "people", "students?",
    "ways", "points?", "coins?", "apples?", "times",
)  # fmt: skip
# Letters that are also variable names count as units only after a space ("5 m", not "5m").
_SHORT_UNIT_WORDS = ("m", "s", "g", "in", "mi", "h", "l")
_UNIT = r"(?:" + "|".join(_UNIT_WORDS) + r")"
_ANY_UNIT = r"(?:" + "|".join(_UNIT_WORDS + _SHORT_UNIT_WORDS) + r")"
_TRAILING_UNIT_WORDS = re.compile(
    r"^(?P<value>.*?[\d}])(?:\s*" + _UNIT + r"|\s+" + _ANY_UNIT + r")(?:\s+" + _ANY_UNIT + r")*"
    r"(?:\^\{?[23]\}?)?\.?$",
    re.IGNORECASE,
)
_TEXT_COMMAND = r"\\(?:text|textrm|textnormal|mbox|mathrm|textit|textbf|mathbf|operatorname|mathit)"
_TRAILING_TEXT = re.compile(r"^(?P<value>.*?[\d}])\s*" + _TEXT_COMMAND + r"\s*\{[^{}]*\}(?:\^\{?[23]\}?)?$")
_TEXT_WRAPPER = re.compile(_TEXT_COMMAND + r"\s*\{([^{}]*)\}")
_SPACING = re.compile(r"(?<!\\)\\[,;:! ]|\\q?quad\b|~")  # not the "\\ " of a matrix row break
_SIZING = re.compile(r"\\(?:left|right|big|Big|bigg|Bigg)[lr]?(?![a-zA-Z])|\\displaystyle")
_THOUSANDS = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_DEGREES = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|°|\\degree")
_BOXED_WHOLE = re.compile(r"^\\(?:boxed|fbox)\s*\{(.*)\}$", re.DOTALL)
_ANSWER_PREFIX = re.compile(r"^(?:the\s+)?(?:final\s+)?answer\s*(?:is|:)\s*", re.IGNORECASE)
_SET_PREFIX = re.compile(r"^[a-zA-Z]\s*\\in\s*")


def _unwrap_boxes(s: str) -> str:
    while True:
        match = _BOXED_WHOLE.match(s)
        if not match:
            return s
        s = match.group(1).strip()


# Longer "answers" are runaway boxes; they get whitespace removal only, which keeps the
# regular expressions below (some quadratic in the worst case) off megabyte inputs.
_MAX_NORMALIZED_LENGTH = 2000


def normalize(answer: str) -> str:
    """Canonical text of one answer (see the module docstring)."""
    s = str(answer).strip()
    if len(s) > _MAX_NORMALIZED_LENGTH:
        return re.sub(r"\s+", "", s)
    s = _unwrap_boxes(s)
    s = _ANSWER_PREFIX.sub("", s)
    # Math delimiters around the whole answer.
    for opening, closing in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(opening) and s.endswith(closing) and len(s) >= len(opening) + len(closing):
            s = s[len(opening) : len(s) - len(closing)].strip()
    s = s.replace("\\$", "").replace("$", "").replace("\u2212", "-")  # U+2212 minus sign
    s = _SIZING.sub("", s)
    s = _SPACING.sub(" ", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\cfrac", "\\frac")
    s = _DEGREES.sub("", s)
    s = s.replace("\\%", "").replace("%", "").replace("\\percent", "")
    s = s.replace("\\leq", "\\le").replace("\\geq", "\\ge").replace("\\neq", "\\ne")
    s = s.replace("\\infin", "\\infty").replace("∞", "\\infty").replace("infinity", "\\infty")
    s = s.replace("\\varnothing", "\\emptyset").replace("\\{\\}", "\\emptyset")
    s = s.replace("{,}", ",")
    s = s.strip().rstrip(".").strip()
    s = re.sub(r"\\text\s*\{\s*\.?\s*\}$", "", s).strip()
    # Trailing units: "27 \text{ miles}", "5 cm^2", "30 degrees" (value must remain).
    for pattern in (_TRAILING_TEXT, _TRAILING_UNIT_WORDS):
        match = pattern.match(s)
        if match and match.group("value").strip():
            s = match.group("value").strip()
    for _ in range(3):  # nested wrappers: \textbf{\text{...}}
        s = _TEXT_WRAPPER.sub(r"\1", s)
    s = _SET_PREFIX.sub("", s)
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    s = re.sub(r"\s+", " ", s).strip()
    if not _is_plain_text(s):
        s = s.replace(" ", "")
        s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
        s = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)
        s = re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", s)
        s = re.sub(r"\\sqrt(\d)", r"\\sqrt{\1}", s)
        s = s.replace("+\\infty", "\\infty")
    return s


_PLAIN_TEXT = re.compile(r"^[^\W\d_](?:[^\W\d_]|[ '\-])*[^\W\d_]$")


def _is_plain_text(s: str) -> bool:
    """Words, not math: "Evelyn", "no solution", "不存在". Runs of 1-2 letters ("ab")
    are left to the math path, where they are products of variables."""
    if not _PLAIN_TEXT.match(s):
        return False
    return " " in s or len(s) >= 3 or not s.isascii()


_MIXED_NUMBER = re.compile(r"^(-?)(\d+)\\frac\{(\d+)\}\{(\d+)\}$")


def mixed_number(s: str) -> str | None:
    """"7\\frac{3}{11}" as the improper fraction "\\frac{80}{11}" (a mixed number, the way
    such answers are typeset in school answer keys), else None."""
    match = _MIXED_NUMBER.match(s)
    if not match:
        return None
    sign, whole, num, den = match.groups()
    if int(den) == 0 or int(num) >= int(den):
        return None
    return f"{sign}\\frac{{{int(whole) * int(den) + int(num)}}}{{{den}}}"


def split_top_level(s: str, separator: str = ",") -> list[str]:
    """Split on ``separator`` outside (), [], {} and \\left/\\right pairs."""
    parts, depth, start = [], 0, 0
    i = 0
    while i < len(s):
        ch = s[i]
        if ch == "\\":
            if s[i + 1 : i + 2] == "{":
                depth += 1  # \{ opens a set
            elif s[i + 1 : i + 2] == "}":
                depth -= 1
            i += 2
            continue
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0 and s.startswith(separator, i):
            parts.append(s[start:i])
            start = i + len(separator)
            i = start
            continue
        i += 1
    parts.append(s[start:])
    return [p.strip() for p in parts]


@dataclass(frozen=True)
class Structure:
    """What an answer is. ``kind`` is one of: ``scalar``, ``text``, ``bracketed`` (tuple or
    interval; ``brackets`` holds the two characters), ``set``, ``list`` (unordered, no
    brackets), ``union`` (items are bracketed strings), ``matrix`` (items are rows joined
    by "&"), ``assign`` (``names`` holds the left-hand sides, ``items`` the values)."""

    kind: str
    items: tuple[str, ...] = ()
    brackets: str = ""
    names: tuple[str, ...] = ()


_ASSIGN_LHS = re.compile(
    r"^(?:[A-Za-z]|\\[a-zA-Z]+)(?:_\{?\w+\}?)?'*(?:\([a-z,]+\))?$"
)
_MATRIX = re.compile(r"^\\begin\{([pbvB]?matrix|array)\}(?:\{[^{}]*\})?(.*)\\end\{\1\}$", re.DOTALL)


def _balanced(s: str) -> bool:
    depth = 0
    i = 0
    while i < len(s):
        if s[i] == "\\":
            depth += {"{": 1, "}": -1}.get(s[i + 1 : i + 2], 0)
            if depth < 0:
                return False
            i += 2
            continue
        if s[i] in "([{":
            depth += 1
        elif s[i] in ")]}":
            depth -= 1
            if depth < 0:
                return False
        i += 1
    return depth == 0


def _assignment(item: str) -> tuple[str, str] | None:
    sides = split_top_level(item, "=")
    if len(sides) != 2 or not sides[1]:
        return None
    lhs = sides[0]
    return (lhs, sides[1]) if _ASSIGN_LHS.match(lhs) else None


def parse_structure(s: str) -> Structure:
    """Classify a normalised answer (see ``Structure``)."""
    if _is_plain_text(s):
        return Structure("text", (s.casefold(),))
    matrix = _MATRIX.match(s)
    if matrix:
        rows = [r.strip() for r in re.split(r"\\\\", matrix.group(2)) if r.strip()]
        return Structure("matrix", tuple(rows))
    unions = split_top_level(s, "\\cup")
    if len(unions) > 1:
        return Structure("union", tuple(unions))
    items = split_top_level(s, ",")
    if len(items) > 1 or _assignment(s):
        assignments = [_assignment(item) for item in items]
        if all(assignments):
            return Structure(
                "assign", tuple(a[1] for a in assignments), names=tuple(a[0] for a in assignments)
            )
        if all(items):
            return Structure("list", tuple(items))
    if s.startswith("\\{") and s.endswith("\\}") and _balanced(s[2:-2]):
        inner = s[2:-2]
        return Structure("set", tuple(split_top_level(inner, ",")) if inner else ())
    if s == "\\emptyset":
        return Structure("set", ())
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]" and _balanced(s[1:-1]):
        inner = split_top_level(s[1:-1], ",")
        if len(inner) > 1 and all(inner):
            return Structure("bracketed", tuple(inner), brackets=s[0] + s[-1])
    return Structure("scalar", (s,))
