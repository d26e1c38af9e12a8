"""String handling of the LIMO evaluation, reproduced for ``mode="limo"``.

Source of the semantics: GAIR-NLP/LIMO ``eval/utils/parser.py`` (``extract_answer``,
``strip_string``) and ``eval/utils/grader.py`` (``choice_answer_clean``), which derive
from QwenLM/Qwen2.5-Math ``evaluation/parser.py``. Read from the copies in
tossowski/LIMO (``eval/utils/grader.py``) and microsoft/SeerAttention
(``eval/reasoning_tasks/Utils/parser.py``, "modified from LIMO"). Where LIMO differs from
Qwen2.5-Math it is LIMO that is followed: one pass over the unit list (Qwen does two),
month names removed, extraction only from ``boxed``. Quirks are kept on purpose - the
point of this mode is to score exactly like the tables the Fathom-R1 seeds published:
the unit list is applied as raw regular expressions (so ``"q ."`` matches any
character), the quote-removal lines are no-ops in the original and stay no-ops here, and
``"and"`` is deleted anywhere (``"band"`` becomes ``"b"``).

``word2number`` is not a dependency: ``word_to_number`` below reproduces its
``w2n.word_to_num`` (akshaynagpal/w2n ``word2number/w2n.py``), which ``strip_string``
applies to the whole answer.
"""

from __future__ import annotations

import re

__all__ = ["limo_extract_answer", "limo_strip_string", "limo_choice_answer_clean", "word_to_number"]

# ------------------------------------------------------------------ word2number

_NUMBER_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60,
    "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100, "thousand": 1000,
    "million": 1000000, "billion": 1000000000, "point": ".",
}  # fmt: skip
_DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _group_value(words: list[str]) -> int:
    # w2n's number_formation: at most four words, combined positionally.
    values = [_NUMBER_WORDS[w] for w in words]
    if len(values) == 4:
        return values[0] * values[1] + values[2] + values[3]
    if len(values) == 3:
        return values[0] * values[1] + values[2]
    if len(values) == 2:
        return values[0] * values[1] if 100 in values else values[0] + values[1]
    return values[0]


def word_to_number(sentence: str) -> int | float:
    """``w2n.word_to_num``: raises ValueError when ``sentence`` holds no number word."""
    sentence = sentence.replace("-", " ").lower()
    if sentence.isdigit():
        return int(sentence)
    words = [w for w in sentence.strip().split() if w in _NUMBER_WORDS]
    if not words:
        raise ValueError("no number words")
    for big in ("thousand", "million", "billion", "point"):
        if words.count(big) > 1:
            raise ValueError("redundant number word")
    decimals: list[str] = []
    if "point" in words:
        at = words.index("point")
        words, decimals = words[:at], words[at + 1 :]
    b = words.index("billion") if "billion" in words else -1
    m = words.index("million") if "million" in words else -1
    t = words.index("thousand") if "thousand" in words else -1
    if (t > -1 and (t < m or t < b)) or (m > -1 and m < b):
        raise ValueError("malformed number")
    total: int | float = 0
    if len(words) == 1:
        total += _NUMBER_WORDS[words[0]]
    elif words:
        if b > -1:
            total += _group_value(words[:b]) * 1000000000
        if m > -1:
            total += _group_value(words[b + 1 : m] if b > -1 else words[:m]) * 1000000
        if t > -1:
            if m > -1:
                total += _group_value(words[m + 1 : t]) * 1000
            elif b > -1:
                total += _group_value(words[b + 1 : t]) * 1000
            else:
                total += _group_value(words[:t]) * 1000
        last = len(words) - 1
        if t > -1 and t != last:
            total += _group_value(words[t + 1 :])
        elif m > -1 and m != last and t != last:
            total += _group_value(words[m + 1 :])
        elif b > -1 and b != last:
            total += _group_value(words[b + 1 :])
        elif t == -1 and m == -1 and b == -1:
            total += _group_value(words)
    if decimals:
        if all(w in _DIGIT_WORDS for w in decimals):
            total += float("0." + "".join(str(_NUMBER_WORDS[w]) for w in decimals))
    return total


def _convert_word_number(text: str) -> str:
    try:
        return str(word_to_number(text))
    except (ValueError, IndexError, KeyError, TypeError):
        return text


# ------------------------------------------------------------------ strip_string

# Units mainly from MathQA, in LIMO's order; the plural of each is appended.
_UNIT_TEXTS = [
    "east", "degree", "mph", "kmph", "ft", "m sqaure", " m east", "sq m", "deg", "mile",
    "q .", "monkey", "prime", "ratio", "profit of rs", "rd", "o", "gm", "p . m", "lb",
    "tile", "per", "dm", "lt", "gain", "ab", "way", "west", "a .", "b .", "c .", "d .",
    "e .", "f .", "g .", "h .", "t", "a", "h", "no change", "men", "soldier", "pie", "bc",
    "excess", "st", "inches", "noon", "percent", "by", "gal", "kmh", "c", "acre", "rise",
    "a . m", "th", "π r 2", "sq", "mark", "l", "toy", "coin", "sq . m", "gallon", "° f",
    "profit", "minw", "yr", "women", "feet", "am", "pm", "hr", "cu cm", "square",
    "v â € ™", "are", "rupee", "rounds", "cubic", "cc", "mtr", "s", "ohm", "number", "kmph",
    "day", "hour", "minute", "min", "second", "man", "woman", "sec", "cube", "mt",
    "sq inch", "mp", "∏ cm ³", "hectare", "more", "sec", "unit", "cu . m", "cm 2", "rs .",
    "rs", "kg", "g", "month", "km", "m", "cm", "mm", "apple", "liter", "loss", "yard",
    "pure", "year", "increase", "decrease", "d", "less", "Surface", "litre", "pi sq m",
    "s .", "metre", "meter", "inch",
]  # fmt: skip
_UNIT_TEXTS = _UNIT_TEXTS + [t + "s" for t in _UNIT_TEXTS]
# Unescaped, as in the original: the entries are used as regular expressions. Each is
# paired with a literal that must occur for the pattern to match (None when the entry has
# regex syntax), which skips most of the ~270 substitutions per answer.
_UNIT_PATTERNS = [
    (re.compile(r"(^|\W)" + unit + r"($|\W)"), None if re.escape(unit) != unit.replace(" ", "\\ ") else unit)
    for unit in _UNIT_TEXTS
]
_MONTHS = re.compile(
    r"\b(January|February|March|April|May|June|July|August|September|October|November|December)\b",
    re.IGNORECASE,
)


def _fix_fracs(string: str) -> str:
    # \frac12 -> \frac{1}{2}, \frac1{72} -> \frac{1}{72}; gives up on malformed input.
    parts = string.split("\\frac")
    out = parts[0]
    for part in parts[1:]:
        out += "\\frac"
        if part and part[0] == "{":
            out += part
            continue
        if len(part) < 2:
            return string
        a, b, rest = part[0], part[1], part[2:]
        out += "{" + a + "}{" + b + "}" + rest if b != "{" else "{" + a + "}" + b + rest
    return out


def _fix_a_slash_b(string: str) -> str:
    pieces = string.split("/")
    if len(pieces) != 2:
        return string
    a, b = pieces
    try:
        a_val = a if "sqrt" in a else int(a)
        b_val = b if "sqrt" in b else int(b)
        if string != f"{a_val}/{b_val}":
            return string
        return "\\frac{" + str(a_val) + "}{" + str(b_val) + "}"
    except ValueError:
        return string


def limo_strip_string(string: str) -> str:
    """LIMO's answer normalisation (``strip_string``), step for step."""
    string = str(string).strip().replace("\n", "").rstrip(".").replace("\\!", "")
    string = re.sub(r"\\begin\{array\}\{.*?\}", r"\\begin{pmatrix}", string)
    string = re.sub(r"\\end\{array\}", r"\\end{pmatrix}", string)
    string = string.replace("bmatrix", "pmatrix").replace("tfrac", "frac").replace("dfrac", "frac")
    string = string.replace("\\neq", "\\ne").replace("\\leq", "\\le").replace("\\geq", "\\ge")
    string = string.replace("\\left", "").replace("\\right", "").replace("\\{", "{").replace("\\}", "}")
    # A trailing \text{...} is a unit ("5 \text{miles}") unless it is the whole answer.
    without_unit = re.sub(r"\\text{.*?}$", "", string).strip()
    if without_unit != "" and without_unit != string:
        string = without_unit
    for pattern, literal in _UNIT_PATTERNS:
        if literal is not None and literal not in string:
            continue
        stripped = pattern.sub(r"\1\2", string)
        if stripped != "":
            string = stripped
    string = string.replace("^{\\circ}", "").replace("^\\circ", "")
    string = string.replace("\\$", "").replace("$", "").replace("\\(", "").replace("\\)", "")
    string = _convert_word_number(string)
    string = re.sub(r"\\text\{(.*?)\}", r"\1", string)
    for key in ("x=", "y=", "z=", "x\\in", "y\\in", "z\\in", "x\\to", "y\\to", "z\\to"):
        string = string.replace(key, "")
    string = string.replace("\\emptyset", "{}").replace("(-\\infty,\\infty)", "\\mathbb{R}")
    string = string.replace("\\%", "").replace("%", "")
    string = _MONTHS.sub("", string)
    string = string.replace(" .", " 0.").replace("{.", "{0.")
    if string.isalnum() and (string[:1], string[-1:]) in (("{", "}"), ("(", ")"), ("[", "]")):
        string = string[1:-1]  # unreachable in practice (brackets are not alnum), kept as in LIMO
    string = string.replace("infinity", "\\infty")
    if "\\infty" not in string:
        string = string.replace("inf", "\\infty")
    string = string.replace("+\\inity", "\\infty")
    string = string.replace("and", "").replace("\\mathbf", "")
    string = re.sub(r"\\mbox{.*?}", "", string)
    if "j" in string and "i" not in string:
        string = string.replace("j", "i")
    string = re.sub(r"(\d+)\.0*([^\d])", r"\1\2", string)
    string = re.sub(r"(\d+)\.0*$", r"\1", string)
    if not string:
        return string
    if string[0] == ".":
        string = "0" + string
    sides = string.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:
        string = sides[1]  # "k = 5" -> "5"
    string = re.sub(r"\\sqrt(\w+)", r"\\sqrt{\1}", string)
    string = string.replace(" ", "")
    return _fix_a_slash_b(_fix_fracs(string))


def limo_extract_answer(text: str) -> str:
    """LIMO's ``extract_answer``: the text after the last ``boxed``; "" when there is none."""
    text = text.replace("\u043a\u0438", "")
    answer = ""
    if "boxed" in text:
        after = text.split("boxed")[-1]
        if not after:
            return ""
        if after[0] == "{":
            depth = 1
            chars = []
            for ch in after[1:]:
                if ch == "{":
                    depth += 1
                elif ch == "}":
                    depth -= 1
                    if depth == 0:
                        break
                chars.append(ch)
            answer = "".join(chars)
        else:
            answer = after.split("$")[0].strip()
    answer = re.sub(r"\n\s*", "", answer)
    if answer[:1] == ":":
        answer = answer[1:]
    if answer[-1:] == ".":
        answer = answer[:-1]
    if answer[-1:] == "/":
        answer = answer[:-1]
    return answer


def limo_choice_answer_clean(pred: str) -> str:
    """LIMO grader's ``choice_answer_clean``: the last standalone A-E, else the cleaned text."""
    pred = pred.strip("\n").rstrip(".").rstrip("/").strip(" ").lstrip(":")
    letters = re.findall(r"\b(A|B|C|D|E)\b", pred.upper())
    chosen = letters[-1] if letters else pred.strip().strip(".")
    return chosen.rstrip(".").rstrip("/")
