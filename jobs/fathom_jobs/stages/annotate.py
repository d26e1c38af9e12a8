"""annotate: a judge rates each problem's difficulty from 1 to 10.

The judge is any OpenAI-compatible chat-completions endpoint (`judge.backend: openai`, API key
from $OPENAI_API_KEY, which the Job gets through envFrom) or a local model run with transformers
or vLLM (`judge.model` is then a model reference). Replies are parsed strictly (see
`parse_difficulty`); an unparseable or failed reply leaves `difficulty` null and keeps the reply in
`difficulty_raw`. Rows are committed to the store after every generate call (`$FATHOM_CHECKPOINT_ROWS`
rows overrides its size), so a restarted Job continues where the last one stopped. An API judge gets
4 x maxConcurrency problems per call (at least 64); a local vLLM judge gets 8,192 at once, spread
over the pod's GPUs / TP engines (continuous batching; `judge.tensorParallelSize` and friends size
them), a transformers judge 8.

HTTP client settings from the environment: FATHOM_HTTP_TIMEOUT_S (300), FATHOM_HTTP_MAX_ATTEMPTS
(6), FATHOM_HTTP_BACKOFF_S (1.0, doubled per retry, capped at 30 s; a Retry-After header wins).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections import Counter

from ..datasets import ANNOTATED, read_dataset, require_columns, require_unique_ids
from ..engines import EngineError, Sampling, derive_seed, engine_options, open_engine, problems_per_call
from ..engines.openai_api import EngineConfigError
from ..errors import StageInputError
from ..inputs import cache_root, fetch
from ..memo import job_output
from ..parts import PartWriter, checkpoint_rows
from ..specs import AnnotateParams, JobSpec, Judge
from ..store import ProgressWriter, write_metrics

log = logging.getLogger("fathom_jobs.annotate")

DEFAULT_PROMPT = (
    "Rate the difficulty of the following competition mathematics problem on a scale from 1 to 10, "
    "where 1 is a routine exercise, 5 is a hard high-school competition problem (AIME level) and 10 "
    "is among the hardest olympiad problems. Judge how hard it is to solve, not how long it is.\n\n"
    "Problem:\n{problem}\n\n"
    "Answer with exactly one line of the form\nDifficulty: <integer from 1 to 10>"
)
# "Difficulty: 7", "**Difficulty:** 7/10", "difficulty = 7"; the last one in the reply counts.
_LABELLED = re.compile(r"difficulty\s*(?:rating|level|score)?\s*\**\s*[:=]\s*\**\s*(\d+(?:\.\d+)?)\s*\**\s*(/\s*10)?",
                       re.IGNORECASE)
_BARE = re.compile(r"^\s*\**\s*(\d+)\s*\**\s*(?:/\s*10)?\s*\.?\s*$")


def parse_difficulty(reply: str) -> int | None:
    """The rating when the reply states one integer from 1 to 10 as asked, else None.

    Accepted: a labelled rating ("Difficulty: 7", "**Difficulty:** 7/10"; the last label wins,
    as reasoning may mention ratings before settling) or a reply that is only the number. A
    fractional or out-of-range rating is not rounded or clipped: it is unparseable.
    """
    labelled = _LABELLED.findall(reply or "")
    if labelled:
        value = labelled[-1][0]
    else:
        bare = _BARE.match(reply or "")
        if not bare:
            return None
        value = bare.group(1)
    if "." in value:
        return None
    rating = int(value)
    return rating if 1 <= rating <= 10 else None


def render_prompt(template: str, problem: str) -> str:
    # replace, not format: problems are full of LaTeX braces.
    return template.replace("{problem}", problem)


def _env_number(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        raise StageInputError(f"{name} must be a number, got {os.environ[name]!r}") from None


def build_engine(params: AnnotateParams, job: JobSpec):
    judge = params.judge
    if judge.backend == "openai":
        if not judge.endpoint:
            raise StageInputError("judge.endpoint is required for an openai judge (e.g. https://api.openai.com/v1)")
        return open_engine("openai", judge.model, endpoint=judge.endpoint, api_key=os.environ.get("OPENAI_API_KEY"),
                           max_concurrency=judge.max_concurrency, requests_per_minute=judge.requests_per_minute,
                           timeout_s=_env_number("FATHOM_HTTP_TIMEOUT_S", 300),
                           max_attempts=int(_env_number("FATHOM_HTTP_MAX_ATTEMPTS", 6)),
                           backoff_base_s=_env_number("FATHOM_HTTP_BACKOFF_S", 1.0))
    model_dir = fetch(judge.model, kind="model", storage=job.storage)
    return open_engine(judge.backend, model_dir, gpus=job.gpus_per_node, **engine_options(judge, model_dir))


def prompts_per_call(judge: Judge) -> int:
    """Problems per generate call and checkpoint: a local judge takes them all at once (up to 8,192)."""
    if judge.backend == "openai":
        return max(64, 4 * judge.max_concurrency)
    return problems_per_call(1, judge.backend)


def run(job: JobSpec) -> None:
    params = AnnotateParams.model_validate(job.params)
    template = params.prompt or DEFAULT_PROMPT
    if "{problem}" not in template:
        raise StageInputError("prompt must contain {problem}, where the problem text goes")
    store, fingerprint, done = job_output(job)
    if done:
        return
    table = read_dataset(params.data, job.storage)
    require_columns(table, ("id", "problem", "answer"), params.data)
    problems = table.to_pylist()
    if not problems:
        raise StageInputError(f"{params.data} holds no problems")
    require_unique_ids(problems, params.data)
    judge = params.judge
    # Local judges sample greedily unless told otherwise; API judges keep the server's default.
    temperature = judge.temperature if judge.temperature is not None or judge.backend == "openai" else 0.0
    sampling = Sampling(n=1, max_tokens=judge.max_tokens, temperature=temperature, top_p=None)

    with tempfile.TemporaryDirectory(dir=cache_root()) as workdir:
        parts = PartWriter(store, ANNOTATED, fingerprint, workdir)
        done = parts.resume()
        done_ids = {row["id"] for row in done}
        todo = [p for p in problems if p["id"] not in done_ids]
        progress = ProgressWriter(store)
        progress.update(len(done), len(problems), resumed=len(done))
        chunk = checkpoint_rows(prompts_per_call(judge))
        engine = build_engine(params, job) if todo else None
        try:
            for start in range(0, len(todo), chunk):
                batch = todo[start:start + chunk]
                conversations = [[{"role": "user", "content": render_prompt(template, p["problem"])}] for p in batch]
                # Seeds only when sampling: a greedy local judge may then batch its prompts.
                seeds = [derive_seed(0, p["id"]) for p in batch] if sampling.temperature != 0 else None
                replies = engine.generate(conversations, sampling, seeds=seeds)
                rows = []
                for problem, [reply] in zip(batch, replies, strict=True):
                    raw = f"error: {reply.error}" if reply.error else reply.text
                    rows.append({**problem, "difficulty": None if reply.error else parse_difficulty(reply.text),
                                 "difficulty_raw": raw})
                parts.append(rows)
                done += rows
                progress.update(len(done), len(problems))
        except EngineConfigError as exc:
            raise StageInputError(str(exc)) from None
        except EngineError:
            log.error("judge failed; %d of %d rows are committed and a restart resumes after them",
                      len(done), len(problems))
            raise
        finally:
            if engine is not None:
                engine.close()
        by_id = {row["id"]: row for row in done}
        ordered = [by_id[p["id"]] for p in problems]  # input order, however the attempts split the work
        ratings = Counter(r["difficulty"] for r in ordered)
        failed = sum((r["difficulty_raw"] or "").startswith("error: ") for r in ordered)
        metrics = {
            "problems": len(ordered), "rated": len(ordered) - ratings[None],
            "unparseable": ratings[None] - failed, "failed": failed,
            "difficulty": {str(k): v for k, v in sorted((k, v) for k, v in ratings.items() if k is not None)},
            "judge": {"backend": judge.backend, "model": judge.model},
        }
        if engine is not None and hasattr(engine, "stats"):
            metrics["requests"] = dict(engine.stats)
        write_metrics(store, metrics)
        parts.commit(ordered, extra={"rows": len(ordered)})
        progress.update(len(problems), len(problems))
        progress.close()
