"""Evaluation metrics, pure: pass@k, majority-vote accuracy (cons@k) and response-length stats.

Conventions (the seeds' tables):
- Accuracies are percentages (52.71, not 0.5271), rounded to 4 decimals in `summarize`.
- pass@1 is the mean correctness over all k samples of all problems; it equals the unbiased
  pass@1 estimator averaged over problems.
- pass@k uses the unbiased estimator of Chen et al. (Codex): 1 - C(n-c, k) / C(n, k) per problem,
  averaged over problems, computed as a product so that n = 64 never builds huge binomials.
- cons@k: per problem, the answers extracted from the k samples vote; a sample with no extracted
  answer does not vote (a problem where none has one counts as wrong). Answers join the first
  existing group they match (`Matcher`: the grader's equivalence in strict mode, exact string
  equality by default). The group with the most votes wins; ties go to the group whose first
  member came first among the samples, so the outcome never depends on dict or set order.
  The winner is correct when its group's first sample was graded correct.
- A response cut at the token cap is graded like any other, as in the seeds' evaluation (unlike
  solve-rate, where it counts as failed); cappedPercent says how many there were.
- The LIMO-compatible figure is `majority_vote` with the default exact-string matcher over the
  raw LIMO-extracted strings and the LIMO-mode grades, which is how the seeds' evaluation votes.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# k values the results table always carries (those <= n); the curve adds powers of two.
REPORTED_KS = (1, 8, 64)

# (candidate, representatives so far) -> index of the first representative it equals, or None.
Matcher = Callable[[str, Sequence[str]], "int | None"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased probability that at least one of k samples (drawn from n, c correct) is correct."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0  # every k-subset contains a correct sample
    # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k/i)
    failure = 1.0
    for i in range(n - c + 1, n + 1):
        failure *= 1.0 - k / i
    return 1.0 - failure


def curve_ks(n: int) -> list[int]:
    """The k values of a pass@k curve for n samples: powers of two up to n, REPORTED_KS, and n."""
    ks = {k for k in REPORTED_KS if k <= n} | {n}
    k = 1
    while k <= n:
        ks.add(k)
        k *= 2
    return sorted(ks)


def exact_matcher(candidate: str, representatives: Sequence[str]) -> int | None:
    for index, representative in enumerate(representatives):
        if candidate == representative:
            return index
    return None


@dataclass(frozen=True)
class Vote:
    answer: str | None  # the winning group's first answer; None when no sample had an answer
    votes: int
    correct: bool


def majority_vote(answers: Sequence[str | None], correct: Sequence[bool], match: Matcher | None = None) -> Vote:
    """The majority answer of one problem's samples (rules in the module docstring)."""
    if len(answers) != len(correct):
        raise ValueError(f"{len(answers)} answers but {len(correct)} grades")
    match = match or exact_matcher
    representatives: list[str] = []
    first_sample: list[int] = []
    votes: list[int] = []
    group_of: dict[str, int] = {}  # identical strings never need the matcher twice
    for index, answer in enumerate(answers):
        if answer is None:
            continue
        group = group_of.get(answer)
        if group is None:
            group = match(answer, representatives)
            if group is None:
                group = len(representatives)
                representatives.append(answer)
                first_sample.append(index)
                votes.append(0)
            group_of[answer] = group
        votes[group] += 1
    if not votes:
        return Vote(answer=None, votes=0, correct=False)
    # Groups are numbered by first occurrence, so the first maximum is the tie-break winner.
    winner = max(range(len(votes)), key=lambda g: (votes[g], -g))
    return Vote(answer=representatives[winner], votes=votes[winner], correct=bool(correct[first_sample[winner]]))


@dataclass(frozen=True)
class TokenStats:
    mean: float
    median: float
    capped_share: float  # fraction of responses stopped by the token cap (finish_reason "length")


def token_stats(tokens: Sequence[int], finish_reasons: Sequence[str]) -> TokenStats:
    if len(tokens) != len(finish_reasons):
        raise ValueError(f"{len(tokens)} token counts but {len(finish_reasons)} finish reasons")
    if not tokens:
        return TokenStats(mean=0.0, median=0.0, capped_share=0.0)
    capped = sum(1 for reason in finish_reasons if reason == "length")
    return TokenStats(mean=statistics.fmean(tokens), median=float(statistics.median(tokens)),
                      capped_share=capped / len(tokens))


@dataclass(frozen=True)
class ProblemOutcome:
    """One problem's k graded samples and its two votes (what a samples part summarises)."""

    correct: Sequence[bool]
    tokens: Sequence[int]
    finish_reasons: Sequence[str]
    answered: int  # samples with an extracted answer (strict extraction)
    cons_correct: bool
    correct_limo: Sequence[bool]
    cons_correct_limo: bool


def _pct(value: float) -> float:
    return round(100.0 * value, 4)


def summarize(problems: Sequence[ProblemOutcome]) -> dict:
    """The results.json entry of one model x benchmark (accuracies in percent).

    Keys: pass@1, cons@k, k, samples, problems, meanTokens, medianTokens, cappedPercent,
    noAnswerPercent, pass@k ({"1": .., "2": .., ..., "k": ..}), limo ({pass@1, cons@k}).
    """
    if not problems:
        raise ValueError("no problems to summarise")
    counts = [len(p.correct) for p in problems]
    if min(counts) == 0:
        raise ValueError("a problem has no samples")
    k = min(counts)  # every problem gets the same k; min keeps pass@k defined if one did not
    samples = sum(counts)
    flat_correct = [c for p in problems for c in p.correct]
    flat_limo = [c for p in problems for c in p.correct_limo]
    stats = token_stats([t for p in problems for t in p.tokens], [r for p in problems for r in p.finish_reasons])
    curve = {str(j): _pct(statistics.fmean(pass_at_k(len(p.correct), sum(map(bool, p.correct)), j)
                                          for p in problems))
             for j in curve_ks(k)}
    return {
        "pass@1": _pct(sum(map(bool, flat_correct)) / samples),
        "cons@k": _pct(sum(p.cons_correct for p in problems) / len(problems)),
        "k": k,
        "samples": samples,
        "problems": len(problems),
        "meanTokens": round(stats.mean, 2),
        "medianTokens": round(stats.median, 2),
        "cappedPercent": _pct(stats.capped_share),
        "noAnswerPercent": _pct(1 - sum(p.answered for p in problems) / samples),
        "pass@k": curve,
        "limo": {
            "pass@1": _pct(sum(map(bool, flat_limo)) / max(1, len(flat_limo))),
            "cons@k": _pct(sum(p.cons_correct_limo for p in problems) / len(problems)),
        },
    }
