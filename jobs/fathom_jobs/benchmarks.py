"""Evaluation problem sets: shipped benchmarks by name, or any jsonl/parquet/dataset by store URI.

A benchmark is a list of `Problem`s with a string gold answer. Multiple-choice problems (GPQA:
the question carries "A. ... D." lines and the answer is a letter) have their choices parsed;
with `shuffle_choices` (EvalParams.gpqaShuffle, on by default) the choices are reordered with a
seed fixed per question and benchmark, never per run, so every run, shard and model sees the same
order. The gold letter follows the correct choice's text. The shipped GPQA file has every answer
"A", so an unshuffled run rewards a model that always answers A; the unshuffled order is kept
only for comparing with published numbers.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, replace
from pathlib import PurePosixPath
from typing import Any

from .errors import StageInputError
from .specs import StorageOptions

BENCHMARKS = ("aime25", "hmmt25", "gpqa-diamond", "aime24", "amc23")
_LETTERS = "ABCDEFGHIJ"
# "\n\nA. first\nB. second\n..." up to the instruction paragraph that ends the GPQA questions.
_CHOICES_START = re.compile(r"\n\s*\nA\. ")
_INSTRUCTION = re.compile(r"\n\s*\n(?=Please reason)")


@dataclass(frozen=True)
class Problem:
    id: str
    problem: str  # the user message, choices included
    answer: str
    index: int  # position in the benchmark file: shards and reports order by it
    # Multiple choice: the choice texts as shown and, for each shown letter, its original letter.
    choices: tuple[str, ...] | None = None
    original_letters: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Benchmark:
    name: str  # display name and store path component
    ref: str  # what the recipe said: a name or a URI
    problems: tuple[Problem, ...]


def benchmark_name(ref: str) -> str:
    """`aime25` -> aime25; `s3://b/sets/my-set.jsonl` -> my-set; a stage output -> its stage name."""
    if "://" not in ref:
        return ref
    last = PurePosixPath(ref.split("://", 1)[1].rstrip("/")).name or ref
    for suffix in (".jsonl", ".json", ".parquet"):
        if last.endswith(suffix):
            return last[: -len(suffix)]
    return last


def gold_string(value: Any) -> str:
    """Answers arrive as int (AIME), float (AMC: 27.0) or str; 27.0 becomes "27"."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def parse_choices(question: str) -> tuple[str, list[str], str] | None:
    """(stem, choice texts in letter order, instruction tail) of a lettered question, else None."""
    starts = list(_CHOICES_START.finditer(question))
    if not starts:
        return None
    start = starts[-1]
    tail_match = _INSTRUCTION.search(question, start.end())
    body_end = tail_match.start() if tail_match else len(question)
    body = question[start.end():body_end]
    texts: list[str] = []
    position = 0
    for letter in _LETTERS[1:]:
        # The next letter's line, searched in order: a choice may span lines.
        found = body.find(f"\n{letter}. ", position)
        if found < 0:
            break
        texts.append(body[position:found])
        position = found + len(letter) + 3
    texts.append(body[position:])
    if len(texts) < 2:
        return None
    tail = question[tail_match.start():] if tail_match else ""
    return question[:start.start()], [t.strip() for t in texts], tail


def _choice_seed(benchmark: str, problem_id: str) -> int:
    digest = hashlib.sha256(f"choices:{benchmark}:{problem_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def shuffle_choices(problem: Problem, benchmark: str) -> Problem:
    """The problem with its choices in a fixed pseudo-random order and the gold letter moved along."""
    if not problem.choices or not problem.original_letters:
        return problem
    order = list(range(len(problem.choices)))
    random.Random(_choice_seed(benchmark, problem.id)).shuffle(order)
    parsed = parse_choices(problem.problem)
    assert parsed is not None, "a problem with choices always parses"
    stem, _, tail = parsed
    choices = tuple(problem.choices[i] for i in order)
    original = tuple(problem.original_letters[i] for i in order)
    shown_gold = _LETTERS[original.index(problem.answer)] if problem.answer in original else problem.answer
    lines = "\n".join(f"{_LETTERS[i]}. {text}" for i, text in enumerate(choices))
    return replace(problem, problem=f"{stem}\n\n{lines}{tail}", answer=shown_gold, choices=choices,
                   original_letters=original)


def problems_from_rows(rows: list[dict[str, Any]], source: str) -> list[Problem]:
    """Rows with problem (or question) and answer fields; rows without an answer are refused."""
    problems = []
    for index, row in enumerate(rows):
        text = row.get("problem") if row.get("problem") is not None else row.get("question")
        answer = row.get("answer")
        if text is None or answer is None or gold_string(answer) == "":
            raise StageInputError(f"{source} row {index}: needs `problem` (or `question`) and `answer` fields")
        problem = Problem(id=str(row.get("id", index)), problem=str(text), answer=gold_string(answer), index=index)
        parsed = parse_choices(problem.problem)
        if parsed is not None and problem.answer in _LETTERS[:len(parsed[1])]:
            problem = replace(problem, choices=tuple(parsed[1]),
                              original_letters=tuple(_LETTERS[:len(parsed[1])]))
        problems.append(problem)
    if not problems:
        raise StageInputError(f"{source} holds no problems")
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        raise StageInputError(f"{source}: problem ids are not unique")
    return problems


def load_benchmark(ref: str, *, shuffle: bool = True, storage: StorageOptions | None = None) -> Benchmark:
    """A shipped benchmark by name, or a jsonl/json/parquet file or problems dataset by URI."""
    from .datasets import DATA_FILES, read_records_file, read_rows, read_shipped
    from .inputs import fetch

    name = benchmark_name(ref)
    if "://" in ref and ref.endswith(DATA_FILES):
        # Raw rows, not a table: a file may mix int and string answers.
        rows = read_records_file(fetch(ref, kind="dataset", storage=storage))
    elif "://" in ref:
        rows = read_rows(ref, storage)  # another stage's problems output
    elif ref in BENCHMARKS:
        rows = read_shipped(ref)
    else:
        raise StageInputError(f"unknown benchmark {ref!r}: expected one of {', '.join(BENCHMARKS)} "
                              "or a store URI (s3://, file://, hf://) of a jsonl with problem/answer fields")
    problems = problems_from_rows(rows, ref)
    if shuffle:
        problems = [shuffle_choices(p, name) for p in problems]
    return Benchmark(name=name, ref=ref, problems=tuple(problems))
