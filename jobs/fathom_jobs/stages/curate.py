"""curate: select and order solve-rate results into a training set.

Selection (every band a parameter; `preset` fills in the seeds' choices, see specs.CURATE_PRESETS):
- solveRate: `above`/`below` exclusive, `atLeast`/`atMost` inclusive, read at `cap`: one of the caps
  the samples carry (a solve-rate stage with `maxTokens: [6000, 16384]` carries both). Default: the
  largest cap. A preset names its cap (16,384 for the SFT sets, 6,000 for the RL set), which applies
  when the samples carry several caps; samples with a single cap are read at that cap.
- difficulty: `min`/`max` inclusive. A problem the judge could not rate (difficulty null) is left
  out by any difficulty band unless the band says `includeUnrated: true`; how many unrated problems
  were selected is reported as `unratedSelected`.
- Problems the solve-rate stage stopped sampling early (`decided: outside`, see stages/solve_rate.py)
  are never selected: their final rate could not have fallen in the bands it was given. This stage
  checks that its own band is one of them - a stopped problem in the difficulty band whose rate
  could still have landed in this solveRate band is an input error (rerun solve-rate with this band
  in its stopOutside; the operator does that for the curate stages of the same recipe).

Order: `easy-to-hard` is solve rate (at the cap) descending (what the base model already solves comes
first), then difficulty ascending (unrated last), then id; `hard-to-easy` reverses the first two keys;
`shuffle` is a seeded shuffle; `none` keeps the input order. `position` numbers the rows in it.

Keep: `shortest-correct-chain` (the fewest-token chain correct at the cap: right and ended within it;
problems without one are dropped), `all-correct-chains` (one row per such chain), `solution` (the
reference solution as the completion; problems without one are dropped), `prompt` (prompt + answer,
for GRPO). `maxChainTokens` leaves out sampled chains longer than that (never truncated; a problem
whose correct chains are all longer is dropped); `droppedTooLong` counts the rows so left out.
Completions are one assistant message `<think>\\n{reasoning}\\n</think>\\n\\n{final answer}`.
"""

from __future__ import annotations

import logging
import random
import statistics
from typing import Any

from ..datasets import CHAINS, PROMPTS, read_dataset, require_columns, write_dataset
from ..errors import StageInputError
from ..memo import job_output
from ..specs import SEED_SYSTEM_PROMPT, CurateParams, DifficultyBand, JobSpec, SolveRateBand
from ..store import write_metrics

log = logging.getLogger("fathom_jobs.curate")
OUTSIDE = "outside"  # solve-rate's `decided` for a problem stopped early


def in_solve_band(rate: float, band: SolveRateBand | None) -> bool:
    return band is None or band.contains(rate)


def in_difficulty_band(difficulty: int | None, band: DifficultyBand | None) -> bool:
    return band is None or band.contains(difficulty)


def carried_caps(rows: list[dict[str, Any]]) -> list[int]:
    """The caps every row's `solve_rates` carries, ascending ([] for samples without them)."""
    sets = {tuple(sorted(e["cap"] for e in r.get("solve_rates") or [])) for r in rows}
    if len(sets) > 1:
        raise StageInputError(f"the rows carry different caps: {sorted(sets)}")
    return list(sets.pop()) if sets else []


def at_cap(row: dict[str, Any], cap: int | None) -> dict[str, Any]:
    """The row as read at `cap`: `solve_rate` and the correct-chain count there."""
    if cap is None:
        return {**row, "correct": sum(bool(s["correct"]) for s in row.get("samples") or [])}
    entry = next(e for e in row["solve_rates"] if e["cap"] == cap)
    return {**row, "solve_rate": entry["rate"], "correct": entry["correct"]}


def correct_at(sample: dict[str, Any], cap: int | None) -> bool:
    return bool(sample["correct"]) and (cap is None or sample["tokens"] <= cap)


def order_rows(rows: list[dict[str, Any]], order: str, seed: int) -> list[dict[str, Any]]:
    def difficulty_key(row: dict[str, Any], sign: int) -> tuple[int, int]:
        d = row.get("difficulty")
        return (1, 0) if d is None else (0, sign * d)

    if order == "easy-to-hard":
        return sorted(rows, key=lambda r: (-r["solve_rate"], difficulty_key(r, 1), r["id"]))
    if order == "hard-to-easy":
        return sorted(rows, key=lambda r: (r["solve_rate"], difficulty_key(r, -1), r["id"]))
    if order == "shuffle":
        shuffled = sorted(rows, key=lambda r: r["id"])
        random.Random(seed).shuffle(shuffled)
        return shuffled
    return list(rows)


def completion_from_chain(text: str, answer: str) -> str:
    # R1-style chains start inside <think> (the generation prompt opened it) and close it themselves.
    body = text.strip()
    if body.startswith("<think>"):
        body = body[len("<think>"):].lstrip("\n")
    if "</think>" in body:
        return "<think>\n" + body
    return f"<think>\n{body}\n</think>\n\nThe final answer is $\\boxed{{{answer}}}$."


def completion_from_solution(solution: str, answer: str) -> str:
    return f"<think>\n{solution.strip()}\n</think>\n\nThe final answer is $\\boxed{{{answer}}}$."


def prompt_messages(problem: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SEED_SYSTEM_PROMPT}, {"role": "user", "content": problem}]


def training_rows(row: dict[str, Any], keep: str, cap: int | None = None,
                  max_chain_tokens: int | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The rows one selected problem contributes (with their completion lengths in tokens or None)."""
    base = {"id": row["id"], "prompt": prompt_messages(row["problem"]), "answer": row["answer"],
            "difficulty": row.get("difficulty"), "solve_rate": row["solve_rate"]}
    if keep == "prompt":
        return [base], {}
    if keep == "solution":
        if not (row.get("solution") or "").strip():
            return [], {"reason": "noSolution"}
        content = completion_from_solution(row["solution"], row["answer"])
        return [{**base, "completion": [{"role": "assistant", "content": content}]}], {"tokens": [None]}
    correct = [(j, s) for j, s in enumerate(row.get("samples") or []) if correct_at(s, cap)]
    if not correct:
        return [], {"reason": "noCorrectChain"}
    fitting = [(j, s) for j, s in correct if max_chain_tokens is None or s["tokens"] <= max_chain_tokens]
    if keep == "shortest-correct-chain":
        too_long = 0 if fitting else 1
        correct = [min(fitting, key=lambda js: (js[1]["tokens"], js[0]))] if fitting else []
    else:
        too_long, correct = len(correct) - len(fitting), fitting
    if not correct:
        return [], {"reason": "tooLong", "tooLong": too_long}
    out = []
    for j, sample in correct:
        content = completion_from_chain(sample["text"], row["answer"])
        out.append({**base, "id": row["id"] if keep == "shortest-correct-chain" else f"{row['id']}-{j}",
                    "completion": [{"role": "assistant", "content": content}]})
    return out, {"tokens": [s["tokens"] for _, s in correct], "tooLong": too_long}


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"min": min(values), "mean": round(statistics.fmean(values), 2), "median": statistics.median(values),
            "max": max(values)}


def could_be_selected(row: dict[str, Any], band: SolveRateBand | None) -> bool:
    """Whether a problem stopped early could have ended in `band` had all k chains been drawn."""
    return band is None or band.reachable(row["correct"], len(row.get("samples") or []), row["k"])


def run(job: JobSpec) -> None:
    given = CurateParams.model_validate(job.params)
    params = given.effective()
    store, fingerprint, done = job_output(job)
    if done:
        return
    if params.max_chain_tokens is not None and "chain" not in params.keep:
        raise StageInputError(f"maxChainTokens applies to sampled chains; keep {params.keep} has none")
    table = read_dataset(params.data, job.storage)
    required = ["id", "problem", "answer", "solve_rate"] + (["samples"] if "chain" in params.keep else [])
    require_columns(table, required, params.data)
    rows = table.to_pylist()
    if not rows:
        raise StageInputError(f"{params.data} holds no problems")
    try:
        cap = given.selection_cap(carried_caps(rows))
    except ValueError as exc:
        raise StageInputError(f"{params.data}: {exc}") from None
    rows = [at_cap(r, cap) for r in rows]
    select = params.select
    stopped = [r for r in rows if r.get("decided") == OUTSIDE]
    wrongly = [r["id"] for r in stopped if in_difficulty_band(r.get("difficulty"), select.difficulty)
               and could_be_selected(r, select.solve_rate)]
    if wrongly:
        raise StageInputError(
            f"{len(wrongly)} problem(s) ({', '.join(wrongly[:5])}) were stopped early by the solve-rate stage but could "
            "have ended in this stage's solveRate band; rerun solve-rate with this band in stopOutside (or [])")
    rated = [r for r in rows if r.get("decided") != OUTSIDE and r["solve_rate"] is not None]
    by_solve = [r for r in rated if in_solve_band(r["solve_rate"], select.solve_rate)]
    selected = [r for r in by_solve if in_difficulty_band(r.get("difficulty"), select.difficulty)]
    ordered = order_rows(selected, params.order, params.seed)
    output, dropped, chain_tokens, too_long = [], {"noCorrectChain": 0, "noSolution": 0, "tooLong": 0}, [], 0
    for row in ordered:
        contributed, info = training_rows(row, params.keep, cap, params.max_chain_tokens)
        if "reason" in info:
            dropped[info["reason"]] += 1
        too_long += info.get("tooLong", 0)
        chain_tokens += [t for t in info.get("tokens", []) if t is not None]
        output += contributed
    for position, row in enumerate(output):
        row["position"] = position
    if not output:
        raise StageInputError(f"no training rows: of {len(rows)} problems {len(by_solve)} are in the solve-rate band"
                              f"{f' at cap {cap}' if cap else ''}, {len(selected)} also in the difficulty band, and "
                              f"{dropped} had nothing to keep")
    kind = PROMPTS if params.keep == "prompt" else CHAINS
    completions = [r["completion"][0]["content"] for r in output if "completion" in r]
    metrics = {
        "input": len(rows), "cap": cap, "stoppedEarly": len(stopped), "inSolveRateBand": len(by_solve),
        "selected": len(selected), "unratedSelected": sum(r.get("difficulty") is None for r in selected),
        "rows": len(output), "dropped": dropped, "droppedTooLong": too_long, "keep": params.keep,
        "order": params.order,
        "solveRate": _stats([r["solve_rate"] for r in selected]),
        "difficulty": _stats([r["difficulty"] for r in selected if r.get("difficulty") is not None]),
        "completionTokens": _stats(chain_tokens),
        "completionChars": _stats([len(c) for c in completions]),
        "promptChars": _stats([len(r["prompt"][-1]["content"]) for r in output]),
    }
    write_metrics(store, metrics)
    write_dataset(store, output, kind, fingerprint=fingerprint, extra={"rows": len(output), "kind": "prompts"
                  if kind is PROMPTS else "chains"})
    log.info("curate: %d rows from %d selected problems (cap %s)", len(output), len(selected), cap)
