"""The GRPO reward: correct AND short (Kimi-1.5 length bonus among a prompt's correct chains)."""

from __future__ import annotations

import pytest

from fathom_jobs.rewards import chain_rewards, is_capped, kimi_lambda, length_bonuses


def test_lambda_runs_from_plus_to_minus_half():
    assert kimi_lambda(100, 100, 300) == 0.5
    assert kimi_lambda(300, 100, 300) == -0.5
    assert kimi_lambda(200, 100, 300) == 0.0
    assert kimi_lambda(50, 50, 50) == 0.0  # nothing to compare against


def test_correct_short_beats_correct_long_beats_wrong_which_is_zero():
    rewards = chain_rewards(["p"] * 4, [100, 300, 50, 200], [True, True, False, True], weight=0.5)
    assert rewards == [1.25, 0.75, 0.0, 1.0]
    short, long_, wrong, middle = rewards
    assert short > middle > long_ > wrong == 0.0


def test_wrong_chains_get_no_length_term_however_short():
    assert length_bonuses([10, 500, 20], [False, True, False], weight=0.5) == [0.0, 0.0, 0.0]


def test_chains_compete_only_within_their_prompt():
    groups = ["a", "b", "a", "b"]
    rewards = chain_rewards(groups, [10, 1000, 20, 2000], [True, True, True, True], weight=1.0)
    assert rewards == [1.5, 1.5, 0.5, 0.5]  # 1000 tokens is short for prompt b


def test_without_length_reward_it_is_plain_correctness():
    assert chain_rewards(["p", "p"], [5, 50], [True, False], kind="none") == [1.0, 0.0]
    assert chain_rewards(["p", "p"], [5, 50], [True, True], weight=0.0) == [1.0, 1.0]


def test_a_chain_without_eos_is_capped():
    assert is_capped([5, 6, 7], eos_token_ids=[2])
    assert not is_capped([5, 6, 2], eos_token_ids=[2, 9])
    assert is_capped([], eos_token_ids=[2])


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError):
        chain_rewards(["p"], [1, 2], [True, True])
    with pytest.raises(ValueError, match="kind"):
        chain_rewards(["p"], [1], [True], kind="linear")
