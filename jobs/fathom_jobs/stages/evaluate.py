"""eval: sample k answers per problem from every model on every benchmark, grade them, and publish
results.json, report.md and report.html (DEVELOPERS.md, "Artifacts between stages").

How the work is split, resumed and put together (the Job is Indexed, JobSpec.shards pods):
- Shard i (JOB_COMPLETION_INDEX) takes problems i, i+N, i+2N, ... of every (model, benchmark)
  pair and commits one part per pair: `samples/<model>/<benchmark>/<i>-of-<N>/data/*.parquet`
  (one row per problem with its k samples) under its own `_MANIFEST.json`, whose `extra.summary`
  carries the per-problem grades, token counts and votes: aggregation reads manifests, never text.
- A part is memoized by a fingerprint of what decides it (model contents, benchmark, sampling
  parameters, shard layout) rather than of the whole stage, so adding a model to the list reuses the
  other models' parts. Each problem draws with a seed derived from (seed, benchmark, problem id), so
  the shard count does not change what is sampled.
- Sampling (continuous batching): a part's problems x samples go to the engine in as few generate
  calls as possible - `problems_per_call`: 8,192 chains per call with vLLM (every AIME/HMMT/GPQA
  part at k = 64 is one call: 128 problems), 8 problems with transformers - and vLLM spreads each
  call over the pod's GPUs / TP engines. Each call's rows are graded and checkpointed
  (fathom_jobs.parts) before the next: a restarted pod resumes after the last checkpointed call,
  so it redoes at most one call ($FATHOM_CHECKPOINT_ROWS overrides the problems per call).
- Prompts (`promptStyle`): default sends `systemPrompt` as the system message and the problem as
  the user message; limo sends LIMO's evaluation prompt (GAIR-NLP/LIMO eval/eval.py with
  --surround_with_messages, eval/prompts/qwen-instruct/{aime,gpqa,math}.py): the system prompt
  "Please reason step by step, and put your final answer within \\boxed{}." and the question
  stripped (eval/utils/parser.py parse_question) as the user message. R1-Distill's chat template
  writes the system prompt right after BOS, so the rendered prompt is the instruction followed by
  `<｜User｜>` and the problem.
- Aggregation: after committing its parts, every shard checks whether all parts of all shards are
  committed with current fingerprints, and if so aggregates. The shard that commits last always
  sees every part (the store is read-after-write consistent), so results exist before the Job
  completes. Two shards finishing together both aggregate; that is safe because aggregation is a
  pure function of the committed summaries, writes byte-identical files (no timestamps, PNGs
  without software metadata) and commits the stage's `_MANIFEST.json` last. A pod killed while
  aggregating fails the attempt; the operator's next attempt (a new Job) finds every part done
  and aggregates again. A shard that finds the stage manifest matching the stage fingerprint does
  nothing.
- progress.json: a sharded run writes each shard's position to `shards/<i>-of-<N>/progress.json`
  (the operator shows the mean over shards); an unsharded run writes the stage's progress.json.

The aggregate, committed by the stage manifest: results.json (`{model: {benchmark: entry}}`, see
`fathom_jobs.metrics.summarize`; accuracies in percent), metrics.json (the status.results table,
the report URI, models and benchmarks), report.md, report.html, and costs.json when the operator
set FATHOM_STAGE_COSTS (`{stage: {gpuHours, costUSD}}`) on the Job. Models are named by the last
path component of their URI (`base` shows as the base model's repository name).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..benchmarks import Benchmark, Problem, load_benchmark
from ..engines import (
    Completion,
    Conversation,
    Engine,
    Sampling,
    chat,
    derive_seed,
    engine_options,
    open_engine,
    placement,
    problems_per_call,
)
from ..errors import StageInputError
from ..grading import Grader, default_grader, extract_choice
from ..inputs import cache_root, fetch, store_for
from ..memo import is_complete, job_fingerprint, job_identities
from ..metrics import ProblemOutcome, majority_vote, summarize
from ..parts import PartWriter, checkpoint_rows
from ..report import write_report
from ..specs import EvalParams, JobSpec, SamplingParams
from ..store import METRICS_NAME, ProgressWriter, Store, fingerprint

log = logging.getLogger("fathom_jobs.eval")
SAMPLES_DIR = "samples"
SHARDS_DIR = "shards"  # per-shard progress, where the operator looks for it
RESULTS_NAME = "results.json"
COSTS_NAME = "costs.json"
# {stage: {gpuHours, costUSD}} of the recipe's stages so far, set by the operator when it has them.
COSTS_ENV = "FATHOM_STAGE_COSTS"
PROMPT_TOKEN_BUDGET = placement.PROMPT_TOKEN_BUDGET  # vLLM context = it + maxTokens (GPQA prompts stay well under)
# LIMO's eval/prompts/qwen-instruct/{aime,gpqa,math}.py system_prompt (question_format is "{question}").
LIMO_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
PART_FORMAT = 1  # bump when the part's rows or summary change, so old parts are redone
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

SAMPLE = pa.struct([("text", pa.string()), ("tokens", pa.int32()), ("finish_reason", pa.string()),
                    ("answer", pa.string()), ("correct", pa.bool_()),
                    ("answer_limo", pa.string()), ("correct_limo", pa.bool_())])
PART_SCHEMA = pa.schema([
    ("id", pa.string()), ("index", pa.int64()), ("problem", pa.string()), ("answer", pa.string()),
    ("original_letters", pa.list_(pa.string())), ("k", pa.int32()), ("samples", pa.list_(SAMPLE)),
    ("pass_rate", pa.float64()), ("cons_answer", pa.string()), ("cons_votes", pa.int32()),
    ("cons_correct", pa.bool_()), ("cons_answer_limo", pa.string()), ("cons_votes_limo", pa.int32()),
    ("cons_correct_limo", pa.bool_()),
])


def path_name(text: str) -> str:
    return _UNSAFE.sub("-", text).strip("-.") or "unnamed"


def model_names(refs: list[str]) -> list[str]:
    """Display names: the last path component of a URI (revision dropped), made unique."""
    names: list[str] = []
    for ref in refs:
        base = path_name(ref.rstrip("/").rsplit("/", 1)[-1].split("@")[0])
        name, n = base, 2
        while name in names:
            name, n = f"{base}-{n}", n + 1
        names.append(name)
    return names


def shard_index(job: JobSpec) -> int:
    raw = os.environ.get("JOB_COMPLETION_INDEX", "0")
    if not raw.isdigit() or int(raw) >= job.shards:
        raise StageInputError(f"JOB_COMPLETION_INDEX={raw!r} is not a shard of 0..{job.shards - 1}")
    return int(raw)


@dataclass(frozen=True)
class Pair:
    model: str
    model_uri: str
    model_identity: Any
    benchmark: Benchmark
    benchmark_identity: Any

    def prefix(self, shard: int, shards: int) -> str:
        return f"{SAMPLES_DIR}/{self.model}/{self.benchmark.name}/{shard}-of-{shards}"

    def fingerprint(self, params: EvalParams, shard: int, shards: int) -> str:
        # What is sampled decides a part; where the engines run (memory share, TP, prefix caching) does
        # not. Settings added since parts were first made count only when set, so old parts stay valid.
        fields = set(SamplingParams.model_fields) - SamplingParams.PLACEMENT_FIELDS - {"kv_cache_dtype"}
        sampling = params.model_dump(by_alias=True, mode="json", include=fields)
        decided_by = {**sampling, "model": self.model_uri, "benchmark": self.benchmark.ref,
                      "gpqaShuffle": params.gpqa_shuffle, "shard": shard, "shards": shards, "format": PART_FORMAT}
        if params.kv_cache_dtype != "auto":
            decided_by["kvCacheDtype"] = params.kv_cache_dtype
        if params.prompt_style != "default":
            decided_by["promptStyle"] = params.prompt_style
        return fingerprint("eval-part", decided_by, os.environ.get("FATHOM_IMAGE", ""),
                           [self.model_identity, self.benchmark_identity])

    def problems(self, shard: int, shards: int) -> list[Problem]:
        return list(self.benchmark.problems[shard::shards])


# ---------------------------------------------------------------------------------- grading
def strict_matcher(grader: Grader) -> Callable[[str, list[str]], int | None]:
    def match(candidate: str, representatives: list[str]) -> int | None:
        verdicts = grader.equivalent_batch([(candidate, r) for r in representatives], "strict")
        return next((i for i, same in enumerate(verdicts) if same), None)

    return match


def grade_rows(grader: Grader, problems: list[Problem], completions: list[list[Completion]]) -> list[dict]:
    """One part row per problem: its samples graded both ways and both votes."""
    strict_answers, limo_answers = [], []
    for problem, outputs in zip(problems, completions, strict=True):
        texts = [c.text for c in outputs]
        if problem.choices:  # GPQA: the letter, however the response phrases it
            strict_answers.append([extract_choice(t, "ABCDEFGHIJ"[:len(problem.choices)]) for t in texts])
        else:
            strict_answers.append([grader.extract(t, "strict") for t in texts])
        limo_answers.append([grader.extract(t, "limo") for t in texts])
    # One batch per mode for the whole chunk: the grader deduplicates and parallelises sympy.
    strict = grader.equivalent_batch([(a, p.answer) for p, ans in zip(problems, strict_answers) for a in ans], "strict")
    limo = grader.equivalent_batch([(a, p.answer) for p, ans in zip(problems, limo_answers) for a in ans], "limo")
    match = strict_matcher(grader)
    rows, offset = [], 0
    for problem, outputs, answers, answers_limo in zip(problems, completions, strict_answers, limo_answers):
        n = len(outputs)
        correct, correct_limo = strict[offset:offset + n], limo[offset:offset + n]
        offset += n
        vote = majority_vote(answers, correct, match)
        vote_limo = majority_vote(answers_limo, correct_limo)
        rows.append({
            "id": problem.id, "index": problem.index, "problem": problem.problem, "answer": problem.answer,
            "original_letters": list(problem.original_letters) if problem.original_letters else None, "k": n,
            "samples": [{"text": c.text, "tokens": c.tokens, "finish_reason": c.finish_reason, "answer": a,
                         "correct": ok, "answer_limo": al, "correct_limo": okl}
                        for c, a, ok, al, okl in zip(outputs, answers, correct, answers_limo, correct_limo)],
            "pass_rate": sum(correct) / n if n else 0.0,
            "cons_answer": vote.answer, "cons_votes": vote.votes, "cons_correct": vote.correct,
            "cons_answer_limo": vote_limo.answer, "cons_votes_limo": vote_limo.votes,
            "cons_correct_limo": vote_limo.correct,
        })
    return rows


def _bits(flags: list[bool]) -> str:
    return "".join("1" if f else "0" for f in flags)


def problem_summary(row: dict) -> dict:
    """The compact per-problem record kept in the part manifest for aggregation."""
    samples = row["samples"]
    return {"id": row["id"], "index": row["index"], "correct": _bits([s["correct"] for s in samples]),
            "correctLimo": _bits([s["correct_limo"] for s in samples]), "tokens": [s["tokens"] for s in samples],
            "capped": _bits([s["finish_reason"] == "length" for s in samples]),
            "answered": sum(s["answer"] is not None for s in samples),
            "cons": bool(row["cons_correct"]), "consLimo": bool(row["cons_correct_limo"])}


def outcome(summary: dict) -> ProblemOutcome:
    return ProblemOutcome(
        correct=[b == "1" for b in summary["correct"]], tokens=summary["tokens"],
        finish_reasons=["length" if b == "1" else "stop" for b in summary["capped"]],
        answered=summary["answered"], cons_correct=summary["cons"],
        correct_limo=[b == "1" for b in summary["correctLimo"]], cons_correct_limo=summary["consLimo"])


# --------------------------------------------------------------------------------- sampling
def conversation(params: EvalParams, problem: Problem) -> Conversation:
    if params.prompt_style == "limo":
        return chat(LIMO_SYSTEM_PROMPT, problem.problem.strip())
    return chat(params.system_prompt, problem.problem)


def load_engine(params: EvalParams, model_uri: str, job: JobSpec) -> Engine:
    model_dir = fetch(model_uri, kind="model", storage=job.storage)
    log.info("loading %s with %s", model_uri, params.engine)
    return open_engine(params.engine, model_dir, gpus=job.gpus_per_node, **engine_options(params, model_dir))


def context_length(model_dir: Path, max_tokens: int) -> int | None:
    """Prompt budget + maxTokens, within the model's limit (a smaller context frees KV cache)."""
    return placement.context_length(model_dir, max_tokens, PROMPT_TOKEN_BUDGET)


class LazyEngine:
    """The engine of one model, loaded on first use: a model whose parts are all done is never loaded."""

    def __init__(self, load: Callable[[], Engine]) -> None:
        self._load = load
        self._engine: Engine | None = None

    def __call__(self) -> Engine:
        if self._engine is None:
            self._engine = self._load()
        return self._engine

    def release(self) -> None:
        if self._engine is None:
            return
        # The next model needs the GPU memory back before it loads: close() returns once it is free.
        engine, self._engine = self._engine, None
        engine.close()


def sample_part(pair: Pair, problems: list[Problem], params: EvalParams, part: Store, part_fingerprint: str,
                get_engine: Callable[[], Engine], grader: Grader, workdir: Path,
                advance: Callable[[int], None]) -> None:
    writer = PartWriter(part, PART_SCHEMA, part_fingerprint, workdir)
    done = writer.resume()
    done_ids = {row["id"] for row in done}
    advance(sum(p.id in done_ids for p in problems))
    todo = [p for p in problems if p.id not in done_ids]
    sampling = Sampling(n=params.samples, max_tokens=params.max_tokens, temperature=params.temperature,
                        top_p=params.top_p, seed=params.seed)
    chunk = checkpoint_rows(problems_per_call(params.samples, params.engine))
    for start in range(0, len(todo), chunk):
        batch = todo[start:start + chunk]
        conversations = [conversation(params, p) for p in batch]
        seeds = [derive_seed(params.seed, f"{pair.benchmark.name}/{p.id}") for p in batch]
        rows = grade_rows(grader, batch, get_engine().generate(conversations, sampling, seeds=seeds))
        writer.append(rows)
        done += rows
        advance(len(batch))
    order = {p.id: p.index for p in problems}
    # One row per problem, even if a pod of an earlier attempt was still checkpointing beside this one.
    unique = {r["id"]: r for r in reversed(done) if r["id"] in order}
    rows = sorted(unique.values(), key=lambda r: order[r["id"]])
    writer.commit(rows, extra={"model": pair.model, "modelUri": pair.model_uri, "benchmark": pair.benchmark.name,
                               "summary": [problem_summary(r) for r in rows]})


# ------------------------------------------------------------------------------ aggregation
def committed_summaries(root: Store, pairs: list[Pair], params: EvalParams, shards: int) -> dict | None:
    """{(model, benchmark): [summary, ...] in benchmark order}, or None while a part is missing."""
    collected: dict[tuple[str, str], list[dict]] = {}
    for pair in pairs:
        summaries: list[dict] = []
        for shard in range(shards):
            manifest = root.read_manifest(pair.prefix(shard, shards))
            if manifest is None or manifest.fingerprint != pair.fingerprint(params, shard, shards):
                return None
            summaries += manifest.extra.get("summary", [])
        collected[(pair.model, pair.benchmark.name)] = sorted(summaries, key=lambda s: s["index"])
    return collected


def stage_costs() -> dict[str, dict[str, float]] | None:
    raw = os.environ.get(COSTS_ENV, "").strip()
    if not raw:
        return None
    try:
        document = json.loads(raw)
        return {str(stage): {"gpuHours": float(entry.get("gpuHours", 0.0)), "costUSD": float(entry.get("costUSD", 0.0))}
                for stage, entry in document.items()}
    except (ValueError, TypeError, AttributeError) as exc:
        log.warning("ignoring %s: not a {stage: {gpuHours, costUSD}} object (%s)", COSTS_ENV, exc)
        return None


def small_results(results: dict) -> dict:
    """The status.results shape (FathomRecipe status): the five headline fields only."""
    keys = ("pass@1", "cons@k", "k", "meanTokens", "samples")
    return {m: {b: {k: e[k] for k in keys} for b, e in per.items()} for m, per in results.items()}


def aggregate(root: Store, job: JobSpec, params: EvalParams, pairs: list[Pair], collected: dict,
              stage_fp: str) -> dict:
    results: dict[str, dict[str, dict]] = {}
    for pair in pairs:
        entry = summarize([outcome(s) for s in collected[(pair.model, pair.benchmark.name)]])
        results.setdefault(pair.model, {})[pair.benchmark.name] = entry
    costs = stage_costs()
    models = {p.model: p.model_uri for p in pairs}
    benchmarks = {p.benchmark.name: p.benchmark.ref for p in pairs}
    meta = {"title": f"{job.recipe} / {job.stage}: evaluation", "models": models, "benchmarks": benchmarks,
            "settings": {"samples per problem": params.samples, "temperature": params.temperature,
                         "top_p": params.top_p, "max tokens": params.max_tokens, "engine": params.engine,
                         "seed": params.seed, "GPQA choices shuffled": params.gpqa_shuffle,
                         "prompt style": params.prompt_style,
                         "system prompt": LIMO_SYSTEM_PROMPT if params.prompt_style == "limo" else params.system_prompt}}
    metrics = {"results": small_results(results), "report": root.uri_of("report.html"),
               "resultsFile": root.uri_of(RESULTS_NAME), "models": models, "benchmarks": benchmarks,
               "problems": sum(e["problems"] for per in results.values() for e in per.values()),
               "samples": sum(e["samples"] for per in results.values() for e in per.values())}
    with tempfile.TemporaryDirectory(dir=cache_root()) as tmp:
        out = Path(tmp)
        write_report(out, results, costs=costs, meta=meta)
        documents = {RESULTS_NAME: results, METRICS_NAME: metrics, **({COSTS_NAME: costs} if costs else {})}
        for name, document in documents.items():
            # Not key-sorted: models and benchmarks stay in the recipe's order.
            (out / name).write_text(json.dumps(document, indent=2, allow_nan=False))
        parts = sorted(p.prefix(i, job.shards) for p in pairs for i in range(job.shards))
        root.upload_dir(out, "", fingerprint=stage_fp, extra={"parts": parts})
    log.info("eval: results for %d models x %d benchmarks at %s", len(models), len(benchmarks), root.uri)
    return results


# ------------------------------------------------------------------------------------ entry
def run(job: JobSpec) -> None:
    params = EvalParams.model_validate(job.params)
    shard, shards = shard_index(job), job.shards
    root = store_for(job.output, job.storage)
    benchmarks = [load_benchmark(ref, shuffle=params.gpqa_shuffle, storage=job.storage) for ref in params.benchmarks]
    names = [b.name for b in benchmarks]
    if len(set(names)) != len(names):
        raise StageInputError(f"benchmarks {names} repeat a name; each needs its own")
    identities = job_identities(job)  # the models', then the benchmarks'
    model_ids, benchmark_ids = identities[:len(params.models)], identities[len(params.models):]
    stage_fp = job_fingerprint(job, identities)
    if is_complete(root, stage_fp):
        log.info("%s is complete for these inputs; nothing to do", root.uri)
        return
    pairs = [Pair(name, uri, identity, benchmark, benchmark_identity)
             for name, uri, identity in zip(model_names(params.models), params.models, model_ids)
             for benchmark, benchmark_identity in zip(benchmarks, benchmark_ids)]

    progress = ProgressWriter(root if shards == 1 else root.child(f"{SHARDS_DIR}/{shard}-of-{shards}"))
    total = sum(len(p.problems(shard, shards)) for p in pairs)
    position = 0

    def advance(count: int) -> None:
        nonlocal position
        position += count
        progress.update(position, total, shard=f"{shard}-of-{shards}")

    # The process-wide grader: its sympy workers start once per process, not once per run.
    grader = default_grader()
    with tempfile.TemporaryDirectory(dir=cache_root()) as workdir:
        for model in dict.fromkeys(p.model for p in pairs):
            model_pairs = [p for p in pairs if p.model == model]
            engine = LazyEngine(lambda uri=model_pairs[0].model_uri: load_engine(params, uri, job))
            try:
                for pair in model_pairs:
                    problems = pair.problems(shard, shards)
                    part = root.child(pair.prefix(shard, shards))
                    part_fp = pair.fingerprint(params, shard, shards)
                    if is_complete(part, part_fp):
                        advance(len(problems))
                        continue
                    sample_part(pair, problems, params, part, part_fp, engine, grader,
                                Path(workdir) / pair.prefix(shard, shards), advance)
            finally:
                engine.release()
    progress.update(total, total, shard=f"{shard}-of-{shards}")
    progress.close()
    collected = committed_summaries(root, pairs, params, shards)
    if collected is None:
        log.info("shard %d-of-%d done; another shard is still sampling and will aggregate", shard, shards)
        return
    aggregate(root, job, params, pairs, collected, stage_fp)
