"""solve-rate: sample k chains per problem under a token cap and grade each one.

solve_rate = correct chains / k; a chain that hits the cap (`finish_reason: length`) counts as
failed whatever it says. Every chain is kept with its token count, extracted answer and verdict
(strict grading). Sharding: pod i of an Indexed Job (JOB_COMPLETION_INDEX) takes input problems
i, i+n, i+2n, ... and writes `shards/<i>-of-<n>/` with its own manifest, progress.json and
metrics.json; the shard that finds every shard committed writes the stage's root `_MANIFEST.json`
(all shards' files) and the combined `metrics.json`. Each problem is sampled under its own seed
(derived from `seed` and its id), so shards, batch sizes and restarts do not change the chains.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any

from ..datasets import SAMPLES, SHARDS_DIR, read_dataset, require_columns, require_unique_ids
from ..engines import Sampling, chat, derive_seed, open_engine
from ..errors import StageInputError
from ..inputs import cache_root, fetch, store_for
from ..memo import is_complete, job_fingerprint
from ..parts import PartWriter, checkpoint_rows
from ..specs import JobSpec, SolveRateParams
from ..store import MANIFEST_NAME, Manifest, ProgressWriter, Store, write_metrics

log = logging.getLogger("fathom_jobs.solve_rate")
BATCH_PROBLEMS = {"vllm": 256, "transformers": 8}  # per generate call and checkpoint part


def shard_position(job: JobSpec) -> tuple[int, int]:
    raw = os.environ.get("JOB_COMPLETION_INDEX", "0")
    if not raw.isdigit() or int(raw) >= job.shards:
        raise StageInputError(f"JOB_COMPLETION_INDEX={raw!r} is not a shard index below shards={job.shards}")
    return int(raw), job.shards


def grade_chains(grader, problem: dict[str, Any], completions) -> dict[str, Any]:
    """The problem's row: every chain with its verdict, and the solve rate."""
    gold = str(problem["answer"])
    capped = [c.finish_reason == "length" for c in completions]
    verdicts = grader.grade_batch([(c.text, gold) for c, cut in zip(completions, capped, strict=True) if not cut])
    verdict = iter(verdicts)
    samples = [{"text": c.text, "tokens": c.tokens, "finish_reason": c.finish_reason,
                "answer": grader.extract(c.text), "correct": False if cut else bool(next(verdict))}
               for c, cut in zip(completions, capped, strict=True)]
    correct = sum(s["correct"] for s in samples)
    return {**problem, "k": len(samples), "solve_rate": correct / len(samples) if samples else 0.0,
            "samples": samples}


def shard_metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    chains = [s for r in rows for s in r["samples"]]
    correct_tokens = [s["tokens"] for s in chains if s["correct"]]
    bands = {"0": 0, "(0,0.2]": 0, "(0.2,0.6)": 0, "[0.6,1)": 0, "1": 0}
    for r in rows:
        rate = r["solve_rate"]
        key = ("0" if rate == 0 else "1" if rate == 1 else "(0,0.2]" if rate <= 0.2
               else "(0.2,0.6)" if rate < 0.6 else "[0.6,1)")
        bands[key] += 1
    return {
        "problems": len(rows), "chains": len(chains), "correct": sum(s["correct"] for s in chains),
        "capped": sum(s["finish_reason"] == "length" for s in chains),
        "tokens": sum(s["tokens"] for s in chains), "correctTokens": sum(correct_tokens),
        "solveRateBands": bands,
    }


def combine_metrics(parts: list[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {"shards": len(parts)}
    for key in ("problems", "chains", "correct", "capped", "tokens", "correctTokens"):
        total[key] = sum(p[key] for p in parts)
    total["solveRateBands"] = {band: sum(p["solveRateBands"][band] for p in parts)
                               for band in parts[0]["solveRateBands"]} if parts else {}
    chains = total["chains"] or 1
    total["meanSolveRate"] = total["correct"] / chains
    total["cappedFraction"] = total["capped"] / chains
    total["meanTokens"] = total["tokens"] / chains
    total["meanCorrectTokens"] = total["correctTokens"] / total["correct"] if total["correct"] else None
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


def run(job: JobSpec) -> None:
    params = SolveRateParams.model_validate(job.params)
    index, count = shard_position(job)
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

    table = read_dataset(params.data, job.storage)
    require_columns(table, ("id", "problem", "answer"), params.data)
    problems = [p for p in table.to_pylist() if p.get("answer") not in (None, "")]
    require_unique_ids(problems, params.data)
    if not problems:
        raise StageInputError(f"{params.data}: no problem has a reference answer to grade against")
    for column in ("solution", "source", "difficulty", "difficulty_raw"):
        for p in problems:
            p.setdefault(column, None)
    mine = problems[index::count]
    sampling = Sampling(n=params.samples, max_tokens=params.max_tokens, temperature=params.temperature,
                        top_p=params.top_p, seed=params.seed)
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
            engine = open_engine(params.engine, fetch(params.model, kind="model", storage=job.storage),
                                 gpus=job.gpus_per_node)
        batch_size = checkpoint_rows(BATCH_PROBLEMS[params.engine])
        try:
            for start in range(0, len(todo), batch_size):
                batch = todo[start:start + batch_size]
                conversations = [chat(params.system_prompt, p["problem"]) for p in batch]
                seeds = [derive_seed(params.seed, p["id"]) for p in batch]
                outputs = engine.generate(conversations, sampling, seeds=seeds)
                rows = [grade_chains(grader, p, completions) for p, completions in zip(batch, outputs, strict=True)]
                parts.append(rows)
                done += rows
                progress.update(len(done), len(mine), shard=index, shards=count)
        finally:
            if engine is not None:
                engine.close()
        by_id = {r["id"]: r for r in done}
        rows = [by_id[p["id"]] for p in mine]
        write_metrics(store, shard_metrics(rows))
        parts.commit(rows, extra={"rows": len(rows), "shard": index, "shards": count})
        progress.close()
    commit_root_if_complete(root, count, fingerprint)
