"""A learnable task for the CPU demo: multi-step integer arithmetic with difficulty known by construction.

A problem chains 1-5 additions/subtractions of digits, evaluated left to right, every running value
a digit too ("What is 7-3+5?"): a table of ~90 facts a tiny model learns in seconds, chained so
that errors compound. Its difficulty (1, 3, 5, 7, 9) grows with the number of operations, so the
annotate stage's judge can be checked against it. A worked solution is one line per step
("7-3=4."); the verbose chains the tiny base model is warmed up on add a
"Check:" line after some steps, which a length reward can teach it to drop, and some carry a slip
(one result off by one), which SFT on the reference solutions can teach it to stop making.

Rows carry `id`, `problem`, `answer` (str), `solution` and `difficulty`: the fields prepare reads,
plus the truth to compare ratings with. The training corpus and the held-out benchmark come from
different seeds; `corpus` also plants a few held-out problems, which prepare's decontamination
must remove (as the full recipe plants AIME25).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

MAX_OPS = 5
# The annotate stage's prompt in the demo recipe (tiny-cpu.yaml repeats it): the stage's default,
# written for competition problems, is 100 tokens the tiny judge would have to read every time.
JUDGE_PROMPT = "Rate the difficulty of this problem from 1 to 10.\n{problem}"
CORPUS_SEED, HELDOUT_SEED, WARMUP_SEED = 1, 2, 3


def difficulty_of(ops: int) -> int:
    """1 (one step) .. 9 (five steps), on the judge's 1-10 scale."""
    return 2 * ops - 1


@dataclass(frozen=True)
class Arithmetic:
    numbers: tuple[int, ...]
    signs: tuple[str, ...]  # one per operation, "+" or "-"

    @property
    def ops(self) -> int:
        return len(self.signs)

    @property
    def difficulty(self) -> int:
        return difficulty_of(self.ops)

    def steps(self) -> list[tuple[int, str, int, int]]:
        """(left, sign, right, result) of each step, left to right."""
        out, value = [], self.numbers[0]
        for sign, right in zip(self.signs, self.numbers[1:], strict=True):
            result = value + right if sign == "+" else value - right
            out.append((value, sign, right, result))
            value = result
        return out

    @property
    def answer(self) -> int:
        return self.steps()[-1][3]

    @property
    def problem(self) -> str:
        # No spaces: every character is one token, and chains stay short to sample on a CPU.
        expression = str(self.numbers[0]) + "".join(f"{s}{n}" for s, n in zip(self.signs, self.numbers[1:], strict=True))
        return f"What is {expression}?"

    def solution(self, rng: random.Random | None = None, check: float = 0.0) -> str:
        """One line per step; with `rng`, each step is followed by its check with probability `check`."""
        return self.worked(rng, check)[0]

    def worked(self, rng: random.Random | None = None, check: float = 0.0, slip: float = 0.0) -> tuple[str, int]:
        """(chain, its final value). With probability `slip` one step's result is off by one and the
        chain carries on from it, to its wrong answer: the noisy data a verified set cleans up."""
        slipped = rng.randrange(self.ops) if rng is not None and rng.random() < slip else -1
        lines, value = [], self.numbers[0]
        for index, (sign, right) in enumerate(zip(self.signs, self.numbers[1:], strict=True)):
            left, value = value, value + right if sign == "+" else value - right
            if index == slipped:
                value = value + 1 if value < 9 else value - 1
            lines.append(f"{left}{sign}{right}={value}.")
            if rng is not None and rng.random() < check:
                inverse = "-" if sign == "+" else "+"
                lines.append(f"Check: {value}{inverse}{right}={left}.")
        return "\n".join(lines), value


def sample(rng: random.Random, ops: int | None = None) -> Arithmetic:
    ops = ops or rng.randint(1, MAX_OPS)
    value = rng.randint(1, 9)
    numbers, signs = [value], []
    for _ in range(ops):
        # Stay within 0..9: add only below 9, subtract only above 0.
        sign = rng.choice([s for s, ok in (("+", value < 9), ("-", value > 0)) if ok])
        right = rng.randint(1, 9 - value) if sign == "+" else rng.randint(1, value)
        value = value + right if sign == "+" else value - right
        numbers.append(right)
        signs.append(sign)
    return Arithmetic(tuple(numbers), tuple(signs))


def row(item: Arithmetic, id_: str) -> dict:
    return {"id": id_, "problem": item.problem, "answer": str(item.answer), "solution": item.solution(),
            "difficulty": item.difficulty, "source": "arithmetic"}


def problems(count: int, seed: int, prefix: str) -> list[dict]:
    """`count` distinct problems, every number of operations equally often (round robin) while it
    has unseen problems left (one-step problems run out: there are only 90)."""
    rng = random.Random(seed)
    rows: list[dict] = []
    seen: set[str] = set()
    turn = 0
    while len(rows) < count:
        turn += 1
        for _ in range(200):
            item = sample(rng, 1 + turn % MAX_OPS)
            if item.problem not in seen:
                seen.add(item.problem)
                rows.append(row(item, f"{prefix}-{len(rows):04d}"))
                break
    return rows


def heldout(count: int = 60) -> list[dict]:
    return problems(count, HELDOUT_SEED, "heldout")


def corpus(count: int = 240, planted: int = 6) -> list[dict]:
    """Training problems plus `planted` copies of held-out ones (under corpus ids) for prepare to remove."""
    rows = problems(count, CORPUS_SEED, "train")
    copies = [{**r, "id": f"planted-{i}"} for i, r in enumerate(heldout()[:planted])]
    step = max(1, len(rows) // max(1, planted))
    for i, copy in enumerate(copies):
        rows.insert(i * step + i, copy)
    return rows
