"""Datasets between stages: read any dataset kind as one table, write one, read raw corpora.

A stage's output is `data/part-NNNNN.parquet` under its prefix, committed by `_MANIFEST.json`;
a sharded stage writes `shards/<i>-of-<n>/data/...`, each shard with its own manifest, and the
reader puts the shards back together in the order of the unsharded input (shard i holds input
rows i, i+n, i+2n, ...). Raw corpora (prepare's sources) are jsonl/json/parquet files or
directories, a shipped set by name, or a hub dataset.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import StageInputError
from .inputs import cache_root, fetch, local_path, parse_hf, store_for
from .memo import SHARD_NAME, SHARDS_DIR, Identity, input_identity, shard_names, shipped_path
from .specs import SHIPPED_DATASETS, CorpusSource, StorageOptions
from .store import MANIFEST_NAME, Manifest, Store, StoreError

DATA_DIR = "data"
DATA_FILES = (".parquet", ".jsonl", ".json")

# The columns of each dataset kind (DEVELOPERS.md, "Artifacts between stages").
PROBLEM_FIELDS = [pa.field("id", pa.string()), pa.field("problem", pa.string()), pa.field("answer", pa.string()),
                  pa.field("solution", pa.string()), pa.field("source", pa.string())]
DIFFICULTY_FIELDS = [pa.field("difficulty", pa.int32()), pa.field("difficulty_raw", pa.string())]
SAMPLE_TYPE = pa.struct([("text", pa.string()), ("tokens", pa.int32()), ("finish_reason", pa.string()),
                         ("answer", pa.string()), ("correct", pa.bool_())])
MESSAGES_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
PROBLEMS = pa.schema(PROBLEM_FIELDS)
ANNOTATED = pa.schema(PROBLEM_FIELDS + DIFFICULTY_FIELDS)
# Per cap: correct chains within it and the solve rate (null for a problem stopped early: `decided`).
CAP_RATE_TYPE = pa.struct([("cap", pa.int32()), ("correct", pa.int32()), ("rate", pa.float64())])
SAMPLES = pa.schema(PROBLEM_FIELDS + DIFFICULTY_FIELDS + [
    pa.field("k", pa.int32()), pa.field("solve_rate", pa.float64()), pa.field("solve_rates", pa.list_(CAP_RATE_TYPE)),
    pa.field("decided", pa.string()), pa.field("samples", pa.list_(SAMPLE_TYPE))])
PROMPTS = pa.schema([pa.field("id", pa.string()), pa.field("prompt", MESSAGES_TYPE), pa.field("answer", pa.string()),
                     pa.field("difficulty", pa.int32()), pa.field("solve_rate", pa.float64())])
CHAINS = pa.schema([pa.field("id", pa.string()), pa.field("prompt", MESSAGES_TYPE),
                    pa.field("completion", MESSAGES_TYPE), pa.field("answer", pa.string()),
                    pa.field("difficulty", pa.int32()), pa.field("solve_rate", pa.float64()),
                    pa.field("position", pa.int64())])


# ------------------------------------------------------------------------------ reading outputs
def read_dataset(uri: str, storage: StorageOptions | None = None) -> pa.Table:
    """A stage's output (sharded or not), a shipped set, a hub dataset, or a jsonl/parquet file."""
    if uri.startswith("hf://"):
        return _read_hub(uri, None, "train")
    if shipped_path(uri) is not None:
        return pa.Table.from_pylist(read_records_file(shipped_path(uri)))
    path = local_path(uri)
    if uri.endswith(DATA_FILES) or (path is not None and path.is_file()):
        return pa.Table.from_pylist(read_records_file(fetch(uri, kind="dataset", storage=storage)))
    store = store_for(uri, storage)
    try:
        names = shard_names(store)
        if names:
            return _read_shards(store, names)
        return _read_committed(store, "")
    except StoreError as exc:
        raise StageInputError(f"cannot read {uri}: {exc}") from None


def read_rows(uri: str, storage: StorageOptions | None = None) -> list[dict[str, Any]]:
    return read_dataset(uri, storage).to_pylist()


def require_columns(table: pa.Table, columns: Iterable[str], uri: str) -> None:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise StageInputError(f"{uri} lacks column(s) {', '.join(missing)} "
                              f"(it has {', '.join(table.column_names) or 'none'})")


def require_unique_ids(rows: list[dict[str, Any]], uri: str) -> None:
    # Resumable stages match finished rows by id: a repeated id would silently lose a row.
    seen: set = set()
    for row in rows:
        if row["id"] in seen:
            raise StageInputError(f"{uri}: id {row['id']!r} appears more than once; ids must be unique")
        seen.add(row["id"])


def _read_shards(store: Store, names: list[str]) -> pa.Table:
    counts = {int(SHARD_NAME.match(n).group(2)) for n in names}
    if len(counts) != 1:
        raise StageInputError(f"{store.uri}/{SHARDS_DIR} mixes shard counts {sorted(counts)}: "
                              "leftovers of an earlier run with a different shard count")
    count = counts.pop()
    missing = [f"{i}-of-{count}" for i in range(count)
               if f"{i}-of-{count}" not in names or store.read_manifest(f"{SHARDS_DIR}/{i}-of-{count}") is None]
    if missing:
        raise StageInputError(f"{store.uri} is incomplete: shard(s) {', '.join(missing)} have no "
                              f"{MANIFEST_NAME} (still running or failed)")
    tables = [_read_committed(store, f"{SHARDS_DIR}/{i}-of-{count}") for i in range(count)]
    return interleave(tables)


def interleave(tables: list[pa.Table]) -> pa.Table:
    """Undo round-robin sharding: row j of shard i was input row i + j * len(tables)."""
    order = []
    for j in range(max((t.num_rows for t in tables), default=0)):
        order += [(i, j) for i, t in enumerate(tables) if j < t.num_rows]
    combined = pa.concat_tables(tables, promote_options="default")
    offsets = [0]
    for t in tables:
        offsets.append(offsets[-1] + t.num_rows)
    return combined.take([offsets[i] + j for i, j in order])


def _read_committed(store: Store, rel: str) -> pa.Table:
    where = store.uri_of(rel)
    if store.read_manifest(rel) is None:
        raise StageInputError(f"{where} has no {MANIFEST_NAME}: the stage has not finished (or never ran)")
    with tempfile.TemporaryDirectory(dir=cache_root()) as tmp:
        store.download_dir(rel, tmp)
        parts = sorted((Path(tmp) / DATA_DIR).glob("part-*.parquet"))
        if not parts:
            raise StageInputError(f"{where} holds no {DATA_DIR}/part-*.parquet files")
        return pa.concat_tables([pq.read_table(p) for p in parts], promote_options="default")


# ------------------------------------------------------------------------------ writing outputs
PART_TARGET_BYTES = 128 * 1024 * 1024


def write_parts(directory: Path, table: pa.Table, rows_per_part: int | None = None, start: int = 0) -> list[Path]:
    """part-NNNNN.parquet files of about PART_TARGET_BYTES (in memory) each, unless rows_per_part says."""
    directory.mkdir(parents=True, exist_ok=True)
    if rows_per_part is None:
        # Rows with every sampled chain weigh ~100x a bare problem: size parts by bytes, not rows.
        rows_per_part = max(1, int(table.num_rows * PART_TARGET_BYTES / max(table.nbytes, 1)))
    paths = []
    for index, offset in enumerate(range(0, max(table.num_rows, 1), rows_per_part), start=start):
        path = directory / f"part-{index:05d}.parquet"
        pq.write_table(table.slice(offset, rows_per_part), path)  # an empty table still carries its columns
        paths.append(path)
    return paths


def to_table(rows: list[dict[str, Any]] | pa.Table, schema: pa.Schema) -> pa.Table:
    if isinstance(rows, pa.Table):
        return rows.select(schema.names).cast(schema)
    return pa.Table.from_pylist(rows, schema=schema)


def write_dataset(store: Store, rows: list[dict[str, Any]] | pa.Table, schema: pa.Schema, *,
                  fingerprint: str | None, extra: dict[str, Any] | None = None) -> Manifest:
    """Write rows as data/part-*.parquet and commit them with a manifest carrying `fingerprint`."""
    with tempfile.TemporaryDirectory(dir=cache_root()) as tmp:
        write_parts(Path(tmp) / DATA_DIR, to_table(rows, schema))
        return store.upload_dir(tmp, "", fingerprint=fingerprint, extra=extra)


# ------------------------------------------------------------------------------ raw corpora
def read_shipped(name: str) -> list[dict[str, Any]]:
    path = shipped_path(name)
    if path is None:
        raise StageInputError(f"unknown shipped set {name!r}: expected one of {', '.join(SHIPPED_DATASETS)}")
    return read_records_file(path)


def read_records_file(path: Path) -> list[dict[str, Any]]:
    """Rows of one jsonl, json (a list of objects) or parquet file."""
    try:
        if path.suffix == ".parquet":
            return pq.read_table(path).to_pylist()
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            rows = json.loads(text)
            if not isinstance(rows, list):
                raise StageInputError(f"{path}: expected a JSON list of objects")
            return rows
        rows = []
        # split("\n"), not splitlines(): U+2028 and friends may sit inside a JSON string.
        for number, line in enumerate(text.split("\n"), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise StageInputError(f"{path} is not valid JSON Lines: {exc.msg} at line {number}") from None
        return rows
    except json.JSONDecodeError as exc:
        raise StageInputError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise StageInputError(f"cannot read {path}: {exc}") from None


def _read_hub(uri: str, subset: str | None, split: str) -> pa.Table:
    repo_id, revision = parse_hf(uri)
    import datasets as hf_datasets

    try:
        loaded = hf_datasets.load_dataset(repo_id, subset, split=split, revision=revision,
                                          token=os.environ.get("HF_TOKEN"))
    except Exception as exc:  # the hub library raises many types; the user needs the message only
        raise StageInputError(f"cannot load {uri} (subset {subset}, split {split}): "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    return loaded.data.table


def read_corpus_records(source: CorpusSource, storage: StorageOptions | None = None) -> list[dict[str, Any]]:
    """The raw rows of one corpus source (no mapping or filtering yet)."""
    uri = source.uri
    if shipped_path(uri) is not None:
        return read_shipped(uri)
    if uri.startswith("hf://"):
        return _read_hub(uri, source.subset, source.split).to_pylist()
    if not uri.startswith(("s3://", "file://")):
        raise StageInputError(f"unknown corpus {uri!r}: expected a shipped set ({', '.join(SHIPPED_DATASETS)}), "
                              "hf://, s3:// or file://")
    path = local_path(uri)
    if path is not None and path.is_dir() and not (path / MANIFEST_NAME).exists():
        files = sorted(p for p in path.rglob("*") if p.suffix in DATA_FILES)
        if not files:
            raise StageInputError(f"{uri} holds no .jsonl, .json or .parquet files")
        return [row for f in files for row in read_records_file(f)]
    if uri.endswith(DATA_FILES):
        return read_records_file(fetch(uri, kind="dataset", storage=storage))
    return read_rows(uri, storage)  # another stage's output



def dataset_identity(uri: str, storage: StorageOptions | None = None) -> Identity:
    """What a stage's fingerprint records about one input (see fathom_jobs.memo)."""
    return input_identity(uri, lambda u: store_for(u, storage))
