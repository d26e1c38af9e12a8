"""GRPO rewards for correct AND short chains (the Fathom-R1-14B-RS length-compression objective).

Pure functions: no torch, no trainer. `stages/grpo.py` grades the chains and calls `chain_rewards`.

    reward = correctness + length bonus

correctness
    1 when the chain stopped on its own (it ends with an EOS token) and the answer extracted from it
    equals the reference under the grader's strict mode (`fathom_jobs.grading`, mode="strict");
    0 otherwise. A chain cut at the completion cap (no EOS) counts as wrong whatever it says: the
    solve-rate stage scores capped chains the same way, and rewarding them would teach the model to
    run into the cap.

length bonus (Kimi k1.5, section 2.3.3 "Length Penalty", restricted to correct chains)
    Among the correct chains of one prompt (a GRPO group), with `min_len` / `max_len` the lengths
    in tokens of the shortest and longest of them:

        lambda(len) = 0.5 - (len - min_len) / (max_len - min_len)
        bonus       = weight * lambda(len)   for a correct chain
        bonus       = 0                      for a wrong chain

    The shortest correct chain gets +weight/2, the longest -weight/2, the others in between,
    linearly. When a group has one correct chain, or all its correct chains have the same length,
    lambda = 0 (there is nothing to compare against). Kimi k1.5 also gives wrong chains
    min(0, lambda); here wrong chains get exactly 0, so the length term never makes a wrong chain
    look better or worse than another wrong chain.

Parameters (`specs.LengthReward`): `kind` ("kimi", or "none" for correctness only) and `weight`
(default 0.5). With weight < 2 every correct chain scores above every wrong one
(1 - weight/2 > 0), so compression never outweighs being right.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

MAX_RANK_SAFE_WEIGHT = 2.0  # above this a long correct chain can score below a wrong one


def is_capped(completion_ids: Sequence[int], eos_token_ids: Sequence[int]) -> bool:
    """Whether a generated chain was cut at the cap: it does not end with an EOS token."""
    return not completion_ids or completion_ids[-1] not in set(eos_token_ids)


def kimi_lambda(length: int, min_len: int, max_len: int) -> float:
    """0.5 for the shortest, -0.5 for the longest, linear between; 0 when all lengths are equal."""
    if max_len == min_len:
        return 0.0
    return 0.5 - (length - min_len) / (max_len - min_len)


def length_bonuses(lengths: Sequence[int], correct: Sequence[bool], weight: float) -> list[float]:
    """The length bonus of each chain of ONE prompt's group (0 for the wrong ones)."""
    if len(lengths) != len(correct):
        raise ValueError(f"{len(lengths)} lengths but {len(correct)} verdicts")
    correct_lengths = [n for n, ok in zip(lengths, correct, strict=True) if ok]
    if not correct_lengths:
        return [0.0] * len(lengths)
    low, high = min(correct_lengths), max(correct_lengths)
    return [weight * kimi_lambda(n, low, high) if ok else 0.0 for n, ok in zip(lengths, correct, strict=True)]


def chain_rewards(
    groups: Sequence[Hashable],
    lengths: Sequence[int],
    correct: Sequence[bool],
    *,
    kind: str = "kimi",
    weight: float = 0.5,
) -> list[float]:
    """correctness + length bonus for a batch of chains; `groups[i]` names chain i's prompt.

    Chains are compared only with chains of the same group, wherever they sit in the batch.
    """
    if not len(groups) == len(lengths) == len(correct):
        raise ValueError(f"groups, lengths and verdicts differ in length: {len(groups)}, {len(lengths)}, {len(correct)}")
    if kind not in ("kimi", "none"):
        raise ValueError(f"unknown length reward kind {kind!r}: expected 'kimi' or 'none'")
    rewards = [1.0 if ok else 0.0 for ok in correct]
    if kind == "none" or weight == 0:
        return rewards
    members: dict[Hashable, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    for indices in members.values():
        bonuses = length_bonuses([lengths[i] for i in indices], [correct[i] for i in indices], weight)
        for index, bonus in zip(indices, bonuses, strict=True):
            rewards[index] += bonus
    return rewards
