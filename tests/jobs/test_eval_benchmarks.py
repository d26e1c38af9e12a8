"""fathom_jobs.benchmarks: shipped sets by name, sets by URI, GPQA choice shuffling."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from fathom_jobs.benchmarks import (
    BENCHMARKS,
    Problem,
    benchmark_name,
    load_benchmark,
    parse_choices,
    problems_from_rows,
    shuffle_choices,
)
from fathom_jobs.datasets import read_shipped
from fathom_jobs.errors import StageInputError

LETTERS = "ABCD"


@pytest.mark.parametrize("name,count", [("aime25", 30), ("hmmt25", 30), ("gpqa-diamond", 198), ("aime24", 30),
                                        ("amc23", 40)])
def test_shipped_benchmarks_load_with_string_answers(name, count):
    benchmark = load_benchmark(name)
    assert benchmark.name == name and len(benchmark.problems) == count
    assert all(isinstance(p.answer, str) and p.answer for p in benchmark.problems)
    assert [p.index for p in benchmark.problems] == list(range(count))
    assert len({p.id for p in benchmark.problems}) == count


def test_answers_become_plain_strings():
    assert load_benchmark("aime25").problems[0].answer == "70"
    assert load_benchmark("amc23").problems[0].answer == "27"  # 27.0 in the file
    assert set(BENCHMARKS) == {"aime25", "hmmt25", "gpqa-diamond", "aime24", "amc23"}


def test_every_gpqa_question_parses_into_four_choices():
    for row in read_shipped("gpqa-diamond"):
        stem, choices, tail = parse_choices(row["question"])
        assert len(choices) == 4 and all(choices), row["id"]
        assert tail.strip().startswith("Please reason") and stem


def test_unshuffled_gpqa_is_the_file_as_published():
    rows = read_shipped("gpqa-diamond")
    benchmark = load_benchmark("gpqa-diamond", shuffle=False)
    assert [p.problem for p in benchmark.problems] == [r["question"] for r in rows]
    assert {p.answer for p in benchmark.problems} == {"A"}


def test_gpqa_shuffle_is_deterministic_and_the_gold_letter_follows_the_right_text():
    original = load_benchmark("gpqa-diamond", shuffle=False).problems
    shuffled = load_benchmark("gpqa-diamond").problems
    assert shuffled == load_benchmark("gpqa-diamond").problems  # same order on every load (and shard)
    for before, after in zip(original, shuffled):
        correct_text = before.choices[0]  # every shipped answer is A
        assert after.choices[LETTERS.index(after.answer)] == correct_text
        assert sorted(after.choices) == sorted(before.choices)
        assert after.original_letters[LETTERS.index(after.answer)] == "A"
        _, shown, tail = parse_choices(after.problem)
        assert shown == list(after.choices)
        assert tail == parse_choices(before.problem)[2]
        assert f"\n{after.answer}. {correct_text}" in after.problem
    spread = Counter(p.answer for p in shuffled)
    assert set(spread) == set(LETTERS) and min(spread.values()) >= 25
    assert len({p.original_letters for p in shuffled}) > 10  # a seed per question, not one order for all


def test_shuffle_moves_a_gold_answer_that_is_not_a():
    question = "Which colour?\n\nA. red\nB. green\nC. blue\nD. black\n\nPlease reason step by step."
    [problem] = problems_from_rows([{"id": "q1", "question": question, "answer": "C"}], "test")
    assert problem.choices == ("red", "green", "blue", "black")
    orders = set()
    for benchmark in ["one", "two", "three", "four", "five", "six"]:
        moved = shuffle_choices(problem, benchmark)
        assert moved.choices[LETTERS.index(moved.answer)] == "blue"
        assert moved.problem.endswith("\n\nPlease reason step by step.")
        orders.add(moved.choices)
    assert len(orders) > 1


def test_a_choice_spanning_lines_stays_whole():
    question = "Pick.\n\nA. 1. NaNH2\n2. H2/Pd\nB. 1. Zn\n2. HCl\nC. x\nD. y\n\nPlease reason."
    _, choices, _ = parse_choices(question)
    assert choices == ["1. NaNH2\n2. H2/Pd", "1. Zn\n2. HCl", "x", "y"]


def test_plain_math_problems_have_no_choices():
    assert parse_choices("Find x.\n\nAnswer with a number.") is None
    [problem] = problems_from_rows([{"problem": "Find x.", "answer": 5}], "test")
    assert problem == Problem(id="0", problem="Find x.", answer="5", index=0)
    assert shuffle_choices(problem, "x") is problem


def test_benchmark_by_uri(tmp_path):
    path = tmp_path / "my-set.jsonl"
    rows = [{"problem": "1+1?", "answer": 2, "id": "a"}, {"question": "2+2?", "answer": "4", "id": "b"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    benchmark = load_benchmark(f"file://{path}")
    assert benchmark.name == "my-set" and benchmark.ref == f"file://{path}"
    assert [(p.id, p.problem, p.answer) for p in benchmark.problems] == [("a", "1+1?", "2"), ("b", "2+2?", "4")]


def test_benchmark_names():
    assert benchmark_name("aime25") == "aime25"
    assert benchmark_name("s3://bucket/sets/hard.parquet") == "hard"
    assert benchmark_name("s3://bucket/ns/recipe/held-out/") == "held-out"


def test_bad_benchmarks_are_input_errors(tmp_path):
    with pytest.raises(StageInputError, match="unknown benchmark 'aime26'"):
        load_benchmark("aime26")
    no_answer = tmp_path / "bad.jsonl"
    no_answer.write_text(json.dumps({"problem": "x"}) + "\n")
    with pytest.raises(StageInputError, match="row 0"):
        load_benchmark(f"file://{no_answer}")
    twice = tmp_path / "twice.jsonl"
    twice.write_text("\n".join(json.dumps({"id": 1, "problem": "x", "answer": 1}) for _ in range(2)))
    with pytest.raises(StageInputError, match="not unique"):
        load_benchmark(f"file://{twice}")
