"""solve-rate: sample k chains per problem under one or several token caps and grade each one.

Caps (`maxTokens: [6000, 16384]`, or one int): every chain is sampled once, at the largest cap, and
graded at each. A chain is correct at cap c when its answer is right (strict grading) AND it ended
within c tokens (`finish_reason: stop`, `tokens` <= c, the end-of-sequence token counted). That is
exactly what a separate run at cap c would say: sampling is a per-step draw from each chain's own
seeded generator, so a run capped at c produces the first c tokens of the longer run's chain
(checked on CPU with the transformers engine in tests/jobs/test_solve_rate.py; on vLLM it holds
up to the batch-dependent numerics two identical runs already differ by).

Rows (DEVELOPERS.md): the problem's columns, `k` (chains asked for), `solve_rates` (per cap:
`cap`, `correct`, `rate` = correct / k, ascending), `solve_rate` (the rate at the smallest cap: a
single-cap stage's rows read as before), `decided` and `samples` (every chain with its `tokens`,
`finish_reason`, extracted `answer` and `correct` = correct at the largest cap).

Filter before sampling: `select: {difficulty: {min: 5}}` samples only problems rated in the band;
problems the judge did not rate are left out unless `includeUnrated: true`.

Adaptive sampling (`stopOutside`, filled in by the operator with the solveRate band - and cap - of
every curate stage reading this stage): chains are drawn in rounds of `samplesPerRound` per problem,
and a problem stops being sampled once it is decided outside: whatever its remaining chains turn out
to be, its final rate at each band's cap can fall in none of the bands. Such a problem could be
selected by no curate stage, so it is written with `decided: "outside"`, the chains drawn so far and
null rates (a rate over fewer chains is not comparable), and curate leaves it out (and checks that
its own band could not have held it). Every other problem gets all k chains. Chain j of a problem is
drawn under its own seed (from `seed`, the problem id and j), so rounds, shards, batches and
restarts never change a chain: the problems sampled to the end carry exactly the chains a full run
draws, and every curated set is identical to a full run's. `[]` (or bands that cover every rate)
samples every problem fully in one pass. Metrics: `samplesDrawn`, `samplesSaved` (chains not drawn)
and `tokensSaved` (estimated: each stopped problem's undrawn chains x the mean length of its drawn
ones).

Sharding: pod i of an Indexed Job (JOB_COMPLETION_INDEX) takes the selected problems i, i+n,
i+2n, ... and writes `shards/<i>-of-<n>/` with its own manifest, progress.json and metrics.json;
the shard that finds every shard committed writes the stage's root `_MANIFEST.json` (all shards'
files) and the combined `metrics.json`.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from typing import Any

from ..datasets import SAMPLES, SHARDS_DIR, read_dataset, require_columns, require_unique_ids
from ..engines import Completion, Sampling, chat, derive_seed, engine_options, open_engine, problems_per_call
from ..errors import StageInputError
from ..inputs import cache_root, fetch, store_for
from ..memo import is_complete, job_fingerprint
from ..parts import PartWriter, checkpoint_rows
from ..specs import DifficultyBand, JobSpec, SolveRateBand, SolveRateParams
from ..store import MANIFEST_NAME, Manifest, ProgressWriter, Store, write_metrics

log = logging.getLogger("fathom_jobs.solve_rate")
OUTSIDE = "outside"  # `decided`: stopped early, its rate can fall in no band of stopOutside
# Solve-rate bands reported in metrics (the seeds' band edges).
REPORTED_BANDS = ("0", "(0,0.2]", "(0.2,0.6)", "[0.6,1)", "1")


def shard_position(job: JobSpec) -> tuple[int, int]:
    raw = os.environ.get("JOB_COMPLETION_INDEX", "0")
    if not raw.isdigit() or int(raw) >= job.shards:
        raise StageInputError(f"JOB_COMPLETION_INDEX={raw!r} is not a shard index below shards={job.shards}")
    return int(raw), job.shards


def sample_seed(seed: int, problem_id: str, j: int) -> int:
    """The seed of chain j of a problem: the same in every round, shard, batch and restart."""
    return derive_seed(seed, f"{problem_id}#{j}")


def grade(grader, problem: dict[str, Any], completions: Sequence[Completion]) -> list[dict[str, Any]]:
    """Each chain with its extracted answer and verdict; a chain the cap stopped is wrong."""
    gold = str(problem["answer"])
    finished = [c for c in completions if c.finish_reason != "length"]
    verdicts = iter(grader.grade_batch([(c.text, gold) for c in finished]))
    return [{"text": c.text, "tokens": c.tokens, "finish_reason": c.finish_reason, "answer": grader.extract(c.text),
             "correct": c.finish_reason != "length" and bool(next(verdicts))} for c in completions]


def correct_within(samples: Sequence[dict[str, Any]], cap: int) -> int:
    """Chains correct at `cap`: right and ended within `cap` tokens."""
    return sum(bool(s["correct"]) and s["tokens"] <= cap for s in samples)


def decided_outside(samples: Sequence[dict[str, Any]], k: int, bands: Sequence[SolveRateBand]) -> bool:
    """No outcome of the remaining k - len(samples) chains puts the problem in any band (at its cap)."""
    drawn = len(samples)
    return drawn < k and not any(b.reachable(correct_within(samples, b.cap or 0), drawn, k) for b in bands)


def problem_row(problem: dict[str, Any], samples: list[dict[str, Any]], caps: Sequence[int], k: int) -> dict[str, Any]:
    stopped = len(samples) < k
    rates = [{"cap": cap, "correct": correct_within(samples, cap), "rate": None} for cap in caps]
    for entry in rates:
        entry["rate"] = None if stopped else entry["correct"] / k
    return {**problem, "k": k, "solve_rate": rates[0]["rate"], "solve_rates": rates,
            "decided": OUTSIDE if stopped else None, "samples": samples}


def stop_bands(params: SolveRateParams) -> list[SolveRateBand]:
    """stopOutside with each band's cap filled in; [] when no problem could ever be stopped."""
    caps, bands = params.caps(), []
    for i, band in enumerate(params.stop_outside or []):
        cap = band.cap or caps[-1]
        if cap not in caps:
            raise StageInputError(
                f"stopOutside[{i}].cap {cap} is not one of maxTokens {caps}: a curate stage reading this stage selects "
                "solve rates at a cap it does not sample")
        bands.append(band.model_copy(update={"cap": cap}))
    # A band holding every possible final rate keeps every problem in play: sample everything in one pass.
    if any(all(b.contains(n / params.samples) for n in range(params.samples + 1)) for b in bands):
        return []
    return bands


def band_counts(rates: list[float | None]) -> dict[str, int]:
    counts = dict.fromkeys(REPORTED_BANDS, 0)
    for rate in rates:
        if rate is None:
            continue
        key = ("0" if rate == 0 else "1" if rate == 1 else "(0,0.2]" if rate <= 0.2
               else "(0.2,0.6)" if rate < 0.6 else "[0.6,1)")
        counts[key] += 1
    return counts


def shard_metrics(rows: list[dict[str, Any]], caps: Sequence[int], k: int) -> dict[str, Any]:
    chains = [s for r in rows for s in r["samples"]]
    stopped = [r for r in rows if r.get("decided") == OUTSIDE]
    saved = [(k - len(r["samples"]), sum(s["tokens"] for s in r["samples"]) / max(1, len(r["samples"])))
             for r in stopped]
    by_cap = {str(cap): [next(e["rate"] for e in r["solve_rates"] if e["cap"] == cap) for r in rows] for cap in caps}
    return {
        "problems": len(rows), "chains": len(chains), "correct": sum(s["correct"] for s in chains),
        "capped": sum(s["finish_reason"] == "length" for s in chains),
        "tokens": sum(s["tokens"] for s in chains),
        "correctTokens": sum(s["tokens"] for s in chains if s["correct"]),
        "caps": list(caps),
        "correctByCap": {str(cap): correct_within(chains, cap) for cap in caps},
        "solveRateBands": band_counts(by_cap[str(caps[0])]),
        "solveRateBandsByCap": {cap: band_counts(rates) for cap, rates in by_cap.items()},
        "samplesPlanned": k * len(rows), "samplesDrawn": len(chains), "samplesSaved": sum(n for n, _ in saved),
        "tokensSaved": round(sum(n * mean for n, mean in saved)), "stoppedOutside": len(stopped),
    }


SUMMED = ("problems", "chains", "correct", "capped", "tokens", "correctTokens", "samplesPlanned", "samplesDrawn",
          "samplesSaved", "tokensSaved", "stoppedOutside", "selectedFrom", "notSelected")


def combine_metrics(parts: list[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {"shards": len(parts)}
    for key in SUMMED:
        total[key] = sum(p.get(key, 0) for p in parts)
    first = parts[0] if parts else {}
    total["caps"] = first.get("caps", [])
    total["correctByCap"] = {cap: sum(p["correctByCap"][cap] for p in parts) for cap in first.get("correctByCap", {})}
    total["solveRateBands"] = {band: sum(p["solveRateBands"][band] for p in parts)
                               for band in first.get("solveRateBands", {})}
    total["solveRateBandsByCap"] = {cap: {band: sum(p["solveRateBandsByCap"][cap][band] for p in parts)
                                          for band in bands}
                                    for cap, bands in first.get("solveRateBandsByCap", {}).items()}
    chains = total["chains"] or 1
    total["meanSolveRate"] = total["correct"] / chains  # over the chains drawn, at the largest cap
    total["cappedFraction"] = total["capped"] / chains
    total["meanTokens"] = total["tokens"] / chains
    total["meanCorrectTokens"] = total["correctTokens"] / total["correct"] if total["correct"] else None
    total["samplesSavedFraction"] = total["samplesSaved"] / total["samplesPlanned"] if total["samplesPlanned"] else 0.0
    return total


def commit_root_if_complete(root: Store, count: int, fingerprint: str) -> bool:
    """Once every shard is committed, write the combined metrics and the root manifest (last)."""
    names = [f"{i}-of-{count}" for i in range(count)]
    manifests = [root.read_manifest(f"{SHARDS_DIR}/{name}") for name in names]
    if any(m is None or m.fingerprint != fingerprint for m in manifests):
        return False
    metrics = [root.read_json(f"{SHARDS_DIR}/{name}/metrics.json") for name in names]
    write_metrics(root, combine_metrics(metrics))
    files = {f"{SHARDS_DIR}/{name}/{path}": entry
             for name, manifest in zip(names, manifests, strict=True) for path, entry in manifest.files.items()}
    combined = Manifest(files=files, fingerprint=fingerprint, extra={"shards": count})
    # Every shard's files are already verified and committed; this only records them together.
    root.write_bytes(MANIFEST_NAME, combined.to_json().encode())
    return True


def selected_problems(params: SolveRateParams, job: JobSpec) -> tuple[list[dict[str, Any]], int]:
    """The problems to sample (answer present, in the difficulty band), and how many were read."""
    table = read_dataset(params.data, job.storage)
    require_columns(table, ("id", "problem", "answer"), params.data)
    band: DifficultyBand | None = params.select.difficulty if params.select else None
    if band is not None:
        require_columns(table, ("difficulty",), params.data + " (select.difficulty needs annotated problems)")
    problems = [p for p in table.to_pylist() if p.get("answer") not in (None, "")]
    require_unique_ids(problems, params.data)
    if not problems:
        raise StageInputError(f"{params.data}: no problem has a reference answer to grade against")
    for column in ("solution", "source", "difficulty", "difficulty_raw"):
        for p in problems:
            p.setdefault(column, None)
    chosen = [p for p in problems if band is None or band.contains(p["difficulty"])]
    if not chosen:
        unrated = sum(p["difficulty"] is None for p in problems)
        raise StageInputError(f"select.difficulty keeps none of {len(problems)} problems ({unrated} unrated; "
                              "includeUnrated: true selects those too)")
    return chosen, len(problems)


class Sampler:
    """Draws a batch of problems' chains in rounds and grades them as they come."""

    def __init__(self, engine, grader, params: SolveRateParams, bands: list[SolveRateBand]) -> None:
        self.engine, self.grader, self.params, self.bands = engine, grader, params, bands
        self.sampling = Sampling(n=1, max_tokens=params.max_cap, temperature=params.temperature, top_p=params.top_p,
                                 seed=params.seed)

    def rows(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        k = self.params.samples
        step = self.params.samples_per_round if self.bands else k
        chains: dict[str, list[dict[str, Any]]] = {p["id"]: [] for p in batch}
        active = list(batch)
        for start in range(0, k, step):
            todo = [(p, j) for p in active for j in range(start, min(start + step, k))]
            outputs = self.engine.generate([chat(self.params.system_prompt, p["problem"]) for p, _ in todo],
                                           self.sampling, seeds=[sample_seed(self.params.seed, p["id"], j)
                                                                 for p, j in todo])
            drawn: dict[str, list[Completion]] = {p["id"]: [] for p in active}
            for (p, _), out in zip(todo, outputs, strict=True):
                drawn[p["id"]] += out[:1]
            for p in active:
                chains[p["id"]] += grade(self.grader, p, drawn[p["id"]])
            active = [p for p in active if not decided_outside(chains[p["id"]], k, self.bands)]
            if not active:
                break
        return [problem_row(p, chains[p["id"]], self.params.caps(), k) for p in batch]


def run(job: JobSpec) -> None:
    params = SolveRateParams.model_validate(job.params)
    index, count = shard_position(job)
    bands = stop_bands(params)
    root = store_for(job.output, job.storage)
    store = root.child(f"{SHARDS_DIR}/{index}-of-{count}")
    fingerprint = job_fingerprint(job)
    if is_complete(store, fingerprint):
        log.info("%s is complete for these inputs", store.uri)
        commit_root_if_complete(root, count, fingerprint)
        return
    for stale in {key.split("/")[1] for key in root.list(SHARDS_DIR) if key.count("/") >= 2}:
        if not stale.endswith(f"-of-{count}"):  # leftovers of a run with another shard count
            root.delete_prefix(f"{SHARDS_DIR}/{stale}")

    problems, read = selected_problems(params, job)
    mine = problems[index::count]
    from ..grading import Grader

    with tempfile.TemporaryDirectory(dir=cache_root()) as workdir, Grader("strict") as grader:
        parts = PartWriter(store, SAMPLES, fingerprint, workdir)
        done = parts.resume()
        done_ids = {r["id"] for r in done}
        todo = [p for p in mine if p["id"] not in done_ids]
        progress = ProgressWriter(store)
        progress.update(len(done), len(mine), shard=index, shards=count)
        engine = None
        if todo:
            model_dir = fetch(params.model, kind="model", storage=job.storage)
            # The engine's context is sized for the largest cap: every chain is sampled there.
            options = engine_options(params.model_copy(update={"max_tokens": params.max_cap}), model_dir)
            engine = open_engine(params.engine, model_dir, gpus=job.gpus_per_node, **options)
        # One checkpoint per batch of problems; each round of a batch is one generate call.
        batch_size = checkpoint_rows(problems_per_call(params.samples_per_round if bands else params.samples,
                                                       params.engine))
        try:
            sampler = Sampler(engine, grader, params, bands)
            for start in range(0, len(todo), batch_size):
                rows = sampler.rows(todo[start:start + batch_size])
                parts.append(rows)
                done += rows
                progress.update(len(done), len(mine), shard=index, shards=count)
        finally:
            if engine is not None:
                engine.close()
        by_id = {r["id"]: r for r in done}
        rows = [by_id[p["id"]] for p in mine]
        metrics = shard_metrics(rows, params.caps(), params.samples)
        if index == 0:  # the filter's counts once, not once per shard
            metrics.update(selectedFrom=read, notSelected=read - len(problems))
        write_metrics(store, metrics)
        parts.commit(rows, extra={"rows": len(rows), "shard": index, "shards": count})
        progress.close()
    commit_root_if_complete(root, count, fingerprint)
