"""prepare: merge problem corpora into one clean problem set.

Rules, in order (each removed row is counted under its rule, and a few are kept as examples in
`removed.json`): no problem text; not selected by the source's `where`; no checkable answer;
contaminated (n-gram overlap with, or equal to, an evaluation problem); exact duplicate of an
earlier problem (same normalised tokens); near-duplicate (shingle Jaccard >= dedup.nearThreshold
with an earlier kept problem); over `maxProblems` (a deterministic pseudo-random subset is kept,
in input order, so a capped demo still mixes its sources). Decontamination runs before
deduplication so every copy of an evaluation problem is counted as contamination.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import Counter, defaultdict
from typing import Any

from ..datasets import PROBLEMS, read_corpus_records, write_dataset
from ..decontam import ContaminationIndex
from ..dedup import exact_key, near_duplicates
from ..errors import StageInputError
from ..memo import job_output
from ..specs import CorpusSource, JobSpec, PrepareParams, StorageOptions
from ..store import ProgressWriter, write_metrics

log = logging.getLogger("fathom_jobs.prepare")
FIELD_CANDIDATES = {"problem": ("problem", "question"), "answer": ("answer",), "solution": ("solution",),
                    "source": ("source",)}
NO_ANSWER = {"", "proof", "notfound", "none", "null", "n/a", "nan", "-"}
EXAMPLES_PER_RULE = 5
RULES = ("no_problem", "filtered", "no_answer", "contaminated", "exact_duplicate", "near_duplicate", "over_cap")


def normalise_answer(value: Any) -> str | None:
    """A reference answer as a string, or None when there is nothing to check against."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, (list, tuple)):
        parts = [normalise_answer(v) for v in value]
        return ", ".join(p for p in parts if p) or None
    text = str(value).strip()
    if len(text) >= 2 and text.startswith("$") and text.endswith("$"):
        text = text.strip("$").strip()
    return None if text.casefold() in NO_ANSWER else text


def source_label(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1].split("@")[0]


def map_source(source: CorpusSource, records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], Counter]:
    """Rows with problem/answer/solution/source, the `where` filter applied; counts of rows left out."""
    columns = set().union(*(r.keys() for r in records)) if records else set()
    mapping = {}
    for field, candidates in FIELD_CANDIDATES.items():
        if field in source.fields:
            if source.fields[field] not in columns:
                raise StageInputError(f"source {source.uri}: fields.{field} names column {source.fields[field]!r}, "
                                      f"which it lacks (columns: {', '.join(sorted(columns))})")
            mapping[field] = source.fields[field]
        else:
            mapping[field] = next((c for c in candidates if c in columns), None)
    if mapping["problem"] is None:
        raise StageInputError(f"source {source.uri} has no problem column (looked for problem, question; "
                              f"map one with fields: {{problem: <column>}}; columns: {', '.join(sorted(columns))})")
    for column in source.where:
        if column not in columns:
            raise StageInputError(f"source {source.uri}: where names column {column!r}, which it lacks")
    dropped: Counter = Counter()
    rows = []
    label = source_label(source.uri)
    for record in records:
        if any(str(record.get(col)) not in {str(v) for v in allowed} for col, allowed in source.where.items()):
            dropped["filtered"] += 1
            continue
        problem = str(record.get(mapping["problem"]) or "").strip()
        if not problem:
            dropped["no_problem"] += 1
            continue
        solution = record.get(mapping["solution"]) if mapping["solution"] else None
        rows.append({
            "problem": problem,
            "answer": normalise_answer(record.get(mapping["answer"])) if mapping["answer"] else None,
            "solution": str(solution).strip() or None if solution is not None else None,
            "source": str(record.get(mapping["source"]) or label) if mapping["source"] else label,
        })
    return rows, dropped


def evaluation_texts(name: str, storage: StorageOptions) -> list[str]:
    records = read_corpus_records(CorpusSource(uri=name), storage)
    texts = [str(r.get("problem") or r.get("question") or "") for r in records]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise StageInputError(f"evaluation set {name} has no problem or question texts to decontaminate against")
    return texts


class Removed:
    """Counts per rule, and the first few removed rows of each rule as examples."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.examples: dict[str, list] = defaultdict(list)
        self.benchmarks: Counter = Counter()

    def __call__(self, rule: str, row: dict[str, Any], **why: Any) -> None:
        self.counts[rule] += 1
        if rule == "contaminated":
            self.benchmarks[why["benchmark"]] += 1
        if len(self.examples[rule]) < EXAMPLES_PER_RULE:
            self.examples[rule].append({"problem": row["problem"][:300], "answer": row.get("answer"),
                                        "source": row.get("source"), **why})


def select(rows: list[dict[str, Any]], params: PrepareParams, index: ContaminationIndex,
           drop: Removed) -> list[dict[str, Any]]:
    """Apply the answer, contamination, duplicate and cap rules in order."""
    kept = []
    for row in rows:
        if params.require_answer and not row["answer"]:
            drop("no_answer", row)
        elif (hit := index.match(row["problem"])) is not None:
            drop("contaminated", row, benchmark=hit[0], evidence=hit[1])
        else:
            kept.append(row)
    if params.dedup.exact:
        first_seen: dict[str, int] = {}
        unique = []
        for row in kept:
            key = exact_key(row["problem"])
            if key in first_seen:
                drop("exact_duplicate", row, duplicate_of=unique[first_seen[key]]["problem"][:120])
            else:
                first_seen[key] = len(unique)
                unique.append(row)
        kept = unique
    near = near_duplicates([r["problem"] for r in kept], params.dedup.near_threshold, params.dedup.ngram)
    for j, (i, similarity) in sorted(near.items()):
        drop("near_duplicate", kept[j], duplicate_of=kept[i]["problem"][:120], jaccard=round(similarity, 3))
    kept = [r for j, r in enumerate(kept) if j not in near]
    for row in kept:
        row["id"] = exact_key(row["problem"])[:16]
    if params.max_problems is not None and len(kept) > params.max_problems:
        chosen = set(sorted(range(len(kept)), key=lambda j: hashlib.sha1(kept[j]["id"].encode()).digest())
                     [:params.max_problems])
        for j, row in enumerate(kept):
            if j not in chosen:
                drop("over_cap", row)
        kept = [r for j, r in enumerate(kept) if j in chosen]
    return kept


def run(job: JobSpec) -> None:
    params = PrepareParams.model_validate(job.params)
    store, fingerprint, done = job_output(job)
    if done:
        return
    progress = ProgressWriter(store)
    total_steps = len(params.sources) + 2
    removed = Removed()
    rows: list[dict[str, Any]] = []
    per_source: dict[str, dict[str, int]] = {}
    read = 0
    for step, source in enumerate(params.sources):
        records = read_corpus_records(source, job.storage)
        mapped, dropped = map_source(source, records)
        if params.require_answer and mapped and not any(r["answer"] for r in mapped):
            raise StageInputError(f"source {source.uri}: no row has a checkable answer "
                                  "(map the answer column with fields: {answer: <column>})")
        removed.counts.update(dropped)
        per_source[source.uri] = {"read": len(records), "mapped": len(mapped)}
        read += len(records)
        rows += mapped
        progress.update(step + 1, total_steps, phase="reading sources")
    index = ContaminationIndex(params.contamination_ngram)
    for name in params.decontaminate:
        index.add(name, evaluation_texts(name, job.storage))
    kept = select(rows, params, index, removed)
    progress.update(total_steps - 1, total_steps, phase="writing")
    if not kept:
        raise StageInputError("no problem survived preparation "
                              f"({', '.join(f'{r}: {n}' for r, n in removed.counts.items())})")
    metrics = {
        "read": read, "kept": len(kept),
        "removed": {rule: removed.counts[rule] for rule in RULES},
        "contaminatedBy": dict(removed.benchmarks), "keptBySource": dict(Counter(r["source"] for r in kept)),
        "sources": per_source,
    }
    store.write_json("removed.json", {rule: removed.examples.get(rule, []) for rule in RULES})
    write_metrics(store, metrics)
    write_dataset(store, kept, PROBLEMS, fingerprint=fingerprint, extra={"rows": len(kept)})
    progress.update(total_steps, total_steps, phase="done")
    progress.close()
    log.info("prepare: kept %d of %d problems; removed %s", len(kept), read, metrics["removed"])
