"""curate: select and order solve-rate results into a training set.

Selection (every band a parameter; `preset` fills in the seeds' choices, see specs.CURATE_PRESETS):
- solveRate: `above`/`below` exclusive, `atLeast`/`atMost` inclusive.
- difficulty: `min`/`max` inclusive. A problem the judge could not rate (difficulty null) passes
  the difficulty band: a band rejects only known ratings outside it, so a judge's parse failures
  do not silently shrink the set (and a demo with a random judge still has data). How many
  unrated problems were selected is reported as `unratedSelected`.

Order: `easy-to-hard` is solve rate descending (what the base model already solves comes first),
then difficulty ascending (unrated last), then id; `hard-to-easy` reverses the first two keys;
`shuffle` is a seeded shuffle; `none` keeps the input order. `position` numbers the rows in it.

Keep: `shortest-correct-chain` (the fewest-token correct chain; problems without one are dropped),
`all-correct-chains` (one row per correct chain), `solution` (the reference solution as the
completion; problems without one are dropped), `prompt` (prompt + answer, for GRPO).
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


def in_solve_band(rate: float, band: SolveRateBand | None) -> bool:
    if band is None:
        return True
    return ((band.above is None or rate > band.above) and (band.at_least is None or rate >= band.at_least)
            and (band.below is None or rate < band.below) and (band.at_most is None or rate <= band.at_most))


def in_difficulty_band(difficulty: int | None, band: DifficultyBand | None) -> bool:
    if band is None or difficulty is None:
        return True
    return (band.min is None or difficulty >= band.min) and (band.max is None or difficulty <= band.max)


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


def training_rows(row: dict[str, Any], keep: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
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
    correct = [(j, s) for j, s in enumerate(row.get("samples") or []) if s["correct"]]
    if not correct:
        return [], {"reason": "noCorrectChain"}
    if keep == "shortest-correct-chain":
        correct = [min(correct, key=lambda js: (js[1]["tokens"], js[0]))]
    out = []
    for j, sample in correct:
        content = completion_from_chain(sample["text"], row["answer"])
        out.append({**base, "id": row["id"] if keep == "shortest-correct-chain" else f"{row['id']}-{j}",
                    "completion": [{"role": "assistant", "content": content}]})
    return out, {"tokens": [s["tokens"] for _, s in correct]}


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"min": min(values), "mean": round(statistics.fmean(values), 2), "median": statistics.median(values),
            "max": max(values)}


def run(job: JobSpec) -> None:
    params = CurateParams.model_validate(job.params).effective()
    store, fingerprint, done = job_output(job)
    if done:
        return
    table = read_dataset(params.data, job.storage)
    required = ["id", "problem", "answer", "solve_rate"] + (["samples"] if "chain" in params.keep else [])
    require_columns(table, required, params.data)
    rows = table.to_pylist()
    if not rows:
        raise StageInputError(f"{params.data} holds no problems")
    select = params.select
    by_solve = [r for r in rows if r["solve_rate"] is not None and in_solve_band(r["solve_rate"], select.solve_rate)]
    selected = [r for r in by_solve if in_difficulty_band(r.get("difficulty"), select.difficulty)]
    ordered = order_rows(selected, params.order, params.seed)
    output, dropped, chain_tokens = [], {"noCorrectChain": 0, "noSolution": 0}, []
    for row in ordered:
        contributed, info = training_rows(row, params.keep)
        if "reason" in info:
            dropped[info["reason"]] += 1
        chain_tokens += [t for t in info.get("tokens", []) if t is not None]
        output += contributed
    for position, row in enumerate(output):
        row["position"] = position
    if not output:
        raise StageInputError(f"no training rows: of {len(rows)} problems {len(by_solve)} are in the solve-rate band, "
                              f"{len(selected)} also in the difficulty band, and {dropped} had nothing to keep")
    kind = PROMPTS if params.keep == "prompt" else CHAINS
    completions = [r["completion"][0]["content"] for r in output if "completion" in r]
    metrics = {
        "input": len(rows), "inSolveRateBand": len(by_solve), "selected": len(selected),
        "unratedSelected": sum(r.get("difficulty") is None for r in selected),
        "rows": len(output), "dropped": dropped, "keep": params.keep, "order": params.order,
        "solveRate": _stats([r["solve_rate"] for r in selected]),
        "difficulty": _stats([r["difficulty"] for r in selected if r.get("difficulty") is not None]),
        "completionTokens": _stats(chain_tokens),
        "completionChars": _stats([len(c) for c in completions]),
        "promptChars": _stats([len(r["prompt"][-1]["content"]) for r in output]),
    }
    write_metrics(store, metrics)
    write_dataset(store, output, kind, fingerprint=fingerprint, extra={"rows": len(output), "kind": "prompts"
                  if kind is PROMPTS else "chains"})
    log.info("curate: %d rows from %d selected problems", len(output), len(selected))
