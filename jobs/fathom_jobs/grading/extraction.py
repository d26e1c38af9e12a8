"""Pulling the final answer out of a model response.

Rules, in priority order (``extract_answer``):

1. Reasoning models write ``<think> ... </think>`` then a summary. If a boxed answer
   exists AFTER the last ``</think>``, only that part is searched: a box drafted while
   thinking must not override the one in the summary. If the part after ``</think>``
   has no box (truncated or unboxed summaries), the whole text is searched, so a box
   inside the thinking still counts.
2. The last complete ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces allowed), or
   ``\\boxed 5`` (one token). A box cut off by the token limit is skipped in favour of
   the previous complete one.
3. The last final-answer line: "The final answer is ...", "Answer: ...",
   "**Answer:** ...", "Final Answer: ...".
4. Opt-in fallbacks from ``ExtractOptions.fallbacks``: ``"last_number"`` (the last
   number in the text) and ``"last_math"`` (the last ``$...$`` / ``\\(...\\)`` span).
   None by default: for training rewards, rewarding a stray number in a rambling
   response is worse than a miss.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "ExtractOptions",
    "extract_answer",
    "extract_boxed",
    "extract_choice",
    "choice_letter",
]

_FALLBACKS = frozenset({"last_number", "last_math"})


@dataclass(frozen=True)
class ExtractOptions:
    """How ``extract_answer`` searches a response.

    style: ``"fathom"`` (the rules in this module's docstring) or ``"limo"`` (the LIMO
        evaluation's extraction, see ``limo_text.limo_extract_answer``; used by
        ``grade(mode="limo")`` so that numbers compare with the published tables).
    fallbacks: extra strategies tried, in order, when rules 2-3 find nothing.
    think_tag: the closing tag of the reasoning block.
    """

    style: str = "fathom"
    boxed: bool = True
    answer_line: bool = True
    fallbacks: tuple[str, ...] = ()
    think_tag: str = "</think>"

    def __post_init__(self) -> None:
        if self.style not in ("fathom", "limo"):
            raise ValueError(f"unknown extraction style {self.style!r}")
        unknown = set(self.fallbacks) - _FALLBACKS
        if unknown:
            raise ValueError(f"unknown fallbacks {sorted(unknown)}; known: {sorted(_FALLBACKS)}")


DEFAULT_OPTIONS = ExtractOptions()

_SIMPLE_BOX = re.compile(r"\\(?:boxed|fbox) *\{([^{}\\]*)\}")


def _box_content_at(text: str, start: int) -> str | None:
    """Content of the box whose command starts at ``start``; None when incomplete."""
    simple = _SIMPLE_BOX.match(text, start)  # the common case: no nested braces
    if simple:
        return simple.group(1)
    i = start + (6 if text.startswith("\\boxed", start) else 5)
    n = len(text)
    while i < n and text[i] in " \t":
        i += 1
    if i >= n:
        return None
    if text[i] == "{":
        depth = 0
        j = i
        while j < n:
            ch = text[j]
            if ch == "\\":
                j += 2  # an escaped brace (\{ \}) is content, not structure
                continue
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    return text[i + 1 : j]
            j += 1
        return None  # cut off before the closing brace
    if text[i].isalpha() and i == start + 6:
        return None  # "\boxedfoo" is another command, not a box
    match = re.match(r"[^\s$]+", text[i:])
    if not match:
        return None
    return match.group(0).rstrip(".,;")


def extract_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{}`` / ``\\fbox{}`` in ``text``, or None."""
    end = len(text)
    while True:
        pos = max(text.rfind("\\boxed", 0, end), text.rfind("\\fbox", 0, end))
        if pos < 0:
            return None
        content = _box_content_at(text, pos)
        if content is not None and content.strip():
            return content.strip()
        end = pos


_ANSWER_LINE = re.compile(
    r"(?:final\s+answer\s*(?:is|:)|answer\s*(?:is|:)|\*\*\s*(?:final\s+)?answer\s*:?\s*\*\*\s*:?)"
    r"[ \t]*(?P<ans>[^\n]+)",
    re.IGNORECASE,
)


def _clean_answer_line(answer: str) -> str:
    answer = answer.strip()
    answer = re.sub(r"^(?:\*\*|:)+|\*\*$", "", answer).strip()
    # "$5$." / "\(5\)" / "\[5\]": keep the math inside.
    math = re.fullmatch(r"\$+(.+?)\$+[.\s]*|\\\((.+?)\\\)[.\s]*|\\\[(.+?)\\\][.\s]*", answer)
    if math:
        answer = next(g for g in math.groups() if g is not None)
    return answer.strip().rstrip(".").strip()


def _extract_answer_line(text: str) -> str | None:
    last = None
    for match in _ANSWER_LINE.finditer(text):
        last = match
    if last is None:
        return None
    answer = _clean_answer_line(last.group("ans"))
    return answer or None


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_MATH_SPAN = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)


def _last_number(text: str) -> str | None:
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


def _last_math(text: str) -> str | None:
    spans = _MATH_SPAN.findall(text)
    if not spans:
        return None
    content = next(g for g in spans[-1] if g)
    return content.strip() or None


def extract_answer(text: str, options: ExtractOptions | None = None) -> str | None:
    """The final answer in ``text`` as a string (not normalised), or None if none found."""
    options = options or DEFAULT_OPTIONS
    if options.style == "limo":
        from fathom_jobs.grading.limo_text import limo_extract_answer

        answer = limo_extract_answer(text)
        return answer or None
    search_text = text
    if options.think_tag and options.think_tag in text:
        tail = text.rsplit(options.think_tag, 1)[1]
        if options.boxed and extract_boxed(tail) is not None:
            search_text = tail
    if options.boxed:
        boxed = extract_boxed(search_text)
        if boxed is not None:
            return boxed
    if options.answer_line:
        line = _extract_answer_line(search_text)
        if line is not None:
            return line
    for fallback in options.fallbacks:
        found = _last_number(search_text) if fallback == "last_number" else _last_math(search_text)
        if found is not None:
            return found
    return None


# ---------------------------------------------------------------- multiple choice

_TEXT_WRAPPERS = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox|textit)\s*\{([^{}]*)\}")
_LETTER_ALONE = re.compile(
    r"^(?:(?:option|choice|answer)\s*:?\s*)?[(\[]?\s*([A-J])\s*[)\]]?(?:\s*[.:)]|\s+|$)", re.IGNORECASE
)


def choice_letter(answer: str, letters: str = "ABCDEFGHIJ") -> str | None:
    """The option letter an extracted answer names: "B", "(B)", "\\text{B}", "B. 10 eV",
    "Option B". Returns None when the answer does not start with exactly one letter."""
    s = answer.strip().strip("$").strip()
    for _ in range(3):  # nested wrappers such as \textbf{\text{B}}
        s = _TEXT_WRAPPERS.sub(r"\1", s)
    s = s.replace("*", "").strip()
    match = _LETTER_ALONE.match(s)
    if not match:
        return None
    letter = match.group(1)
    rest = s[match.end() :]
    # "A < B" or "AB" are not a choice; lowercase "a" only counts when marked as one.
    if letter.islower() and not re.match(r"^[(\[]|^(?:option|choice|answer)", s, re.IGNORECASE):
        return None
    letter = letter.upper()
    # "A < B" is an ordering, "B or C" a hedge: neither picks one option.
    if rest and (re.match(r"^\s*[<>=+\-*/^]", rest) or re.search(r"\b[A-J]\b", rest)):
        return None
    return letter if letter in letters else None


_CHOICE_IN_TEXT = re.compile(
    r"(?:answer|choice|option)\s*(?:is|:)?\s*(?:\*\*)?\s*(?:option\s*)?[(\[]?([A-J])[)\]]?(?![A-Za-z])",
    re.IGNORECASE,
)


def extract_choice(text: str, letters: str = "ABCD", options: ExtractOptions | None = None) -> str | None:
    """The option letter a GPQA-style response picks: the boxed/answer-line answer if it is
    a letter ("\\boxed{C}", "Answer: (C)"), else the last "answer is (C)" phrase, else the
    last parenthesised letter "(C)" after the reasoning block."""
    answer = extract_answer(text, options)
    if answer is not None:
        letter = choice_letter(answer, letters)
        if letter is not None:
            return letter
    tail = text.rsplit("</think>", 1)[1] if "</think>" in text else text
    found = [m.group(1).upper() for m in _CHOICE_IN_TEXT.finditer(tail)]
    found = [f for f in found if f in letters]
    if found:
        return found[-1]
    marked = [m for m in re.findall(r"\(([A-J])\)", tail) if m in letters]
    return marked[-1] if marked else None
