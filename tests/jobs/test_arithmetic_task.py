"""The demo's arithmetic task: right answers, difficulty by construction, held-out set kept apart."""

from __future__ import annotations

import json
import random
import re

from fathom_jobs import arithmetic
from fathom_jobs.grading.grader import Grader
from fathom_jobs.stages.curate import completion_from_solution
from fathom_jobs.tiny import HELDOUT_NAME, write_task


def _evaluate(problem: str) -> int:
    expression = re.findall(r"\d+|[+-]", re.fullmatch(r"What is ([0-9+-]+)\?", problem).group(1))
    value = int(expression[0])
    for sign, number in zip(expression[1::2], expression[2::2], strict=True):
        value = value + int(number) if sign == "+" else value - int(number)
    return value


def test_answers_solutions_and_difficulty_follow_the_problem_text():
    rows = arithmetic.problems(200, seed=7, prefix="t")
    assert len({r["problem"] for r in rows}) == len(rows) == len({r["id"] for r in rows})
    for row in rows:
        assert row["answer"] == str(_evaluate(row["problem"]))
        steps = row["solution"].split("\n")
        ops = row["problem"].count("+") + row["problem"].count("-")
        assert len(steps) == ops and row["difficulty"] == arithmetic.difficulty_of(ops)
        assert steps[-1].endswith(f"={row['answer']}.")
        # Every running value is a digit: the facts a tiny model has to learn stay few.
        assert all(0 <= int(n) <= 9 for step in steps for n in re.findall(r"\d+", step))
    assert {r["difficulty"] for r in rows} == {1, 3, 5, 7, 9}


def test_verbose_chains_only_add_checks():
    item = arithmetic.sample(random.Random(0), ops=4)
    verbose = item.solution(random.Random(1), check=1.0).split("\n")
    assert [line for line in verbose if not line.startswith("Check: ")] == item.solution().split("\n")
    assert len(verbose) == 2 * item.ops


def test_the_grader_reads_a_worked_solution_as_the_curate_stage_writes_it():
    row = arithmetic.problems(5, seed=3, prefix="g")[4]
    wrong = str((int(row["answer"]) + 1) % 10)
    with Grader("strict") as grader:
        assert grader.grade(completion_from_solution(row["solution"], row["answer"]), row["answer"])
        assert not grader.grade(completion_from_solution(row["solution"], wrong), row["answer"])


def test_corpus_and_benchmark_differ_but_for_the_planted_copies(tmp_path):
    out = write_task(tmp_path / "task")
    train = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    heldout = [json.loads(line) for line in (out / f"{HELDOUT_NAME}.jsonl").read_text().splitlines()]
    assert len(heldout) == 60 and {r["difficulty"] for r in heldout} == {1, 3, 5, 7, 9}
    planted = [r for r in train if r["id"].startswith("planted-")]
    assert len(planted) == 6
    assert {r["problem"] for r in planted} <= {r["problem"] for r in heldout}
    # Same family, different seed: the rest overlap only where short problems collide by chance.
    overlap = {r["problem"] for r in train if not r["id"].startswith("planted-")} & {r["problem"] for r in heldout}
    assert 0 < len(overlap) <= 15 and all(p.count("+") + p.count("-") <= 2 for p in overlap)
    assert write_task(tmp_path / "again").joinpath("train.jsonl").read_text() == (out / "train.jsonl").read_text()


def test_a_slipped_chain_is_off_by_one_once_and_carries_on_to_a_wrong_answer():
    item = arithmetic.sample(random.Random(4), ops=3)
    chain, answer = item.worked(random.Random(5), slip=1.0)
    lines = chain.split("\n")
    wrong = [line for line in lines if _evaluate(f"What is {line.split('=')[0]}?") != int(line.split("=")[1][:-1])]
    assert len(wrong) == 1 and answer != item.answer and lines[-1].endswith(f"={answer}.")
    assert item.worked(random.Random(5), slip=0.0) == (item.solution(), item.answer)
