"""fathom_jobs.metrics: pass@k, the cons@k vote and token statistics on hand-made samples."""

from __future__ import annotations

import math

import pytest

from fathom_jobs.metrics import ProblemOutcome, Vote, curve_ks, majority_vote, pass_at_k, summarize, token_stats


def closed_form(n: int, c: int, k: int) -> float:
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def test_pass_at_k_matches_the_closed_form_everywhere():
    checked = 0
    for n in [1, 2, 3, 4, 5, 8, 10, 16, 33, 64, 100]:
        for c in range(n + 1):
            for k in sorted({1, 2, 3, 8, 16, 64, n} & set(range(1, n + 1))):
                assert pass_at_k(n, c, k) == pytest.approx(closed_form(n, c, k), rel=1e-9, abs=1e-12), (n, c, k)
                checked += 1
    assert checked > 1000


def test_pass_at_k_edges():
    assert pass_at_k(64, 0, 64) == 0.0
    assert pass_at_k(64, 1, 64) == 1.0
    assert pass_at_k(64, 64, 1) == 1.0
    assert pass_at_k(64, 16, 1) == pytest.approx(0.25)
    # n - c < k: every draw of k holds a correct sample.
    assert pass_at_k(10, 8, 3) == 1.0
    for bad in [(4, 5, 1), (4, 1, 0), (4, 1, 5), (4, -1, 1)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)


def test_curve_ks():
    assert curve_ks(64) == [1, 2, 4, 8, 16, 32, 64]
    assert curve_ks(4) == [1, 2, 4]
    assert curve_ks(10) == [1, 2, 4, 8, 10]
    assert curve_ks(1) == [1]


def test_vote_tie_goes_to_the_answer_seen_first():
    assert majority_vote(["3", "5", "5", "3"], [False, True, True, False]) == Vote("3", 2, False)
    assert majority_vote(["5", "3", "3", "5"], [True, False, False, True]) == Vote("5", 2, True)
    # A clear majority wins wherever it first appears.
    assert majority_vote(["1", "2", "2", "2", "1"], [True, False, False, False, True]) == Vote("2", 3, False)


def test_vote_ignores_missing_answers():
    assert majority_vote([None, None, None], [False] * 3) == Vote(None, 0, False)
    assert majority_vote([None, "7", None, None], [False, True, False, False]) == Vote("7", 1, True)
    assert majority_vote([], []) == Vote(None, 0, False)
    with pytest.raises(ValueError):
        majority_vote(["1"], [])


def test_vote_groups_answers_with_the_matcher_and_grades_the_group_by_its_first_member():
    values = {"1/2": 0.5, "0.5": 0.5, "\\frac{1}{2}": 0.5, "3": 3.0}
    calls = []

    def same_value(candidate, representatives):
        calls.append(candidate)
        return next((i for i, r in enumerate(representatives) if values[r] == values[candidate]), None)

    answers = ["3", "1/2", "0.5", "3", "\\frac{1}{2}", "0.5"]
    vote = majority_vote(answers, [False, True, True, False, True, True], same_value)
    assert vote == Vote("1/2", 4, True)
    assert calls == ["3", "1/2", "0.5", "\\frac{1}{2}"]  # a repeated string never asks the matcher again
    # Without the matcher the spellings split the vote and "3" (first of the tied) wins.
    assert majority_vote(answers, [False, True, True, False, True, True]).answer == "3"


def test_token_stats_counts_capped_responses():
    stats = token_stats([10, 20, 30, 40], ["stop", "length", "stop", "length"])
    assert (stats.mean, stats.median, stats.capped_share) == (25.0, 25.0, 0.5)
    assert token_stats([], []).capped_share == 0.0
    with pytest.raises(ValueError):
        token_stats([1], [])


def outcome(correct, tokens, reasons, answered, cons, limo, cons_limo):
    return ProblemOutcome(correct=[bool(c) for c in correct], tokens=tokens, finish_reasons=reasons,
                          answered=answered, cons_correct=cons, correct_limo=[bool(c) for c in limo],
                          cons_correct_limo=cons_limo)


def test_summarize_hand_made_benchmark():
    problems = [
        outcome([1, 1, 0, 0], [100, 200, 300, 400], ["stop", "stop", "length", "stop"], 3, True, [1, 0, 0, 0], False),
        outcome([0, 0, 0, 0], [50, 50, 50, 50], ["length"] * 4, 0, False, [0, 0, 0, 0], False),
    ]
    result = summarize(problems)
    assert result["pass@1"] == 25.0
    assert result["cons@k"] == 50.0
    assert result["k"] == 4 and result["samples"] == 8 and result["problems"] == 2
    assert result["meanTokens"] == 150.0
    assert result["medianTokens"] == 75.0
    assert result["cappedPercent"] == 62.5
    assert result["noAnswerPercent"] == 62.5
    assert result["pass@k"] == {"1": 25.0, "2": pytest.approx(100 * (1 - 1 / 6) / 2, abs=1e-4), "4": 50.0}
    assert result["limo"] == {"pass@1": 12.5, "cons@k": 0.0}


def test_summarize_pass_at_1_is_the_mean_over_all_samples():
    problems = [outcome([1] * c + [0] * (8 - c), [1] * 8, ["stop"] * 8, 8, c > 4, [0] * 8, False) for c in range(9)]
    result = summarize(problems)
    assert result["pass@1"] == pytest.approx(100 * sum(range(9)) / 72, abs=1e-4)
    assert result["pass@k"]["1"] == pytest.approx(result["pass@1"], abs=1e-4)
    assert result["pass@k"]["8"] == pytest.approx(100 * 8 / 9, abs=1e-4)  # every problem but c = 0
    assert set(result["pass@k"]) == {"1", "2", "4", "8"}


def test_summarize_refuses_empty_input():
    with pytest.raises(ValueError):
        summarize([])
    with pytest.raises(ValueError):
        summarize([outcome([], [], [], 0, False, [], False)])
