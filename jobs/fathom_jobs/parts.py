"""Resumable outputs: rows checkpointed to the store in small parts as a stage produces them.

A long stage (annotate, solve-rate) uploads `checkpoint/part-NNNNN.parquet` every few rows. A
restarted attempt downloads the parts already there, skips their rows and carries on. When every
row is done, the rows are written in input order as `data/part-*.parquet`, committed with the
manifest, and the checkpoint parts are removed. `checkpoint/fingerprint.json` records the inputs
the parts were made from, so parts from a run with other parameters are discarded, not resumed.

Each part is committed by a small record beside it (`part-NNNNN.parquet.json`: size and sha256),
written after the part itself. A resumed attempt keeps only parts whose record exists and whose
bytes match it and still read as a table; anything else (a killed upload, a corrupt or truncated
object, a part that does not parse) is deleted and its rows are done again.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .datasets import DATA_DIR, to_table, write_parts
from .store import FileEntry, Manifest, Store, StoreError
from .store.manifest import hash_file

log = logging.getLogger("fathom_jobs.parts")
CHECKPOINT_ENV = "FATHOM_CHECKPOINT_ROWS"
CHECKPOINT_DIR = "checkpoint"
MARKER = f"{CHECKPOINT_DIR}/fingerprint.json"
_PART = re.compile(r"^part-(\d{5,})\.parquet$")
RECORD = ".json"  # a part's commit record: <part>.json with its size and sha256


def checkpoint_rows(default: int) -> int:
    """Rows per checkpoint part: $FATHOM_CHECKPOINT_ROWS, else the stage's default."""
    value = os.environ.get(CHECKPOINT_ENV, "")
    return max(1, int(value)) if value.isdigit() else default


class PartWriter:
    def __init__(self, store: Store, schema: pa.Schema, fingerprint_: str, workdir: str | Path) -> None:
        self.store = store
        self.schema = schema
        self.fingerprint = fingerprint_
        self.workdir = Path(workdir)
        self.local_parts = self.workdir / CHECKPOINT_DIR
        self.local_parts.mkdir(parents=True, exist_ok=True)
        self.next_index = 0

    def resume(self) -> list[dict[str, Any]]:
        """Rows of the parts an earlier attempt checkpointed (none when its inputs differed)."""
        try:
            marker = self.store.read_json(MARKER, max_bytes=4096) if self.store.exists(MARKER) else None
        except StoreError as exc:  # unreadable: as good as parts from other inputs
            log.warning("discarding checkpoint parts under %s: %s", self.store.uri, exc)
            marker = {}
        if not isinstance(marker, dict) or marker.get("fingerprint") != self.fingerprint:
            if marker:
                log.info("discarding checkpoint parts made from other inputs under %s", self.store.uri)
            self.store.delete_prefix(CHECKPOINT_DIR)
            self.store.write_json(MARKER, {"fingerprint": self.fingerprint})
            return []
        rows: list[dict[str, Any]] = []
        keys = set(self.store.list(CHECKPOINT_DIR))
        kept = 0
        for key in sorted(keys):
            match = _PART.match(key.rsplit("/", 1)[-1])
            if not match:
                continue
            self.next_index = max(self.next_index, int(match.group(1)) + 1)
            found = self._verified_rows(key, key + RECORD in keys)
            if found is None:
                self._drop(key)
                continue
            rows += found
            kept += 1
        log.info("resuming %s: %d rows in %d parts already done", self.store.uri, len(rows), kept)
        return rows

    def _verified_rows(self, key: str, recorded: bool) -> list[dict[str, Any]] | None:
        """The rows of one checkpoint part if it is committed, intact and readable; else None (logged)."""
        if not recorded:
            log.warning("discarding %s: its upload never finished", self.store.uri_of(key))
            return None
        local = self.workdir / key
        try:
            record = self.store.read_json(key + RECORD, max_bytes=4096)
            expected = FileEntry(size=int(record["size"]), sha256=str(record["sha256"]).lower())
            self.store.download_file(key, local)
            if hash_file(local) != expected:
                log.warning("discarding %s: it does not match its record (corrupt or truncated)",
                            self.store.uri_of(key))
                return None
            return list(pq.read_table(local).cast(self.schema).to_pylist())
        except (StoreError, KeyError, TypeError, ValueError, OSError, pa.ArrowException) as exc:
            log.warning("discarding %s: %s", self.store.uri_of(key), str(exc)[:300])
            return None
        finally:
            local.unlink(missing_ok=True)

    def _drop(self, key: str) -> None:
        for rel in (key, key + RECORD):
            try:
                self.store.delete(rel)
            except StoreError as exc:
                log.warning("could not delete %s: %s", self.store.uri_of(rel), exc)

    def append(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        [path] = write_parts(self.local_parts, to_table(rows, self.schema), rows_per_part=len(rows),
                             start=self.next_index)
        key = f"{CHECKPOINT_DIR}/{path.name}"
        entry = hash_file(path)
        self.store.upload_file(path, key)
        # The record last: a part without one (a killed upload) is never resumed.
        self.store.write_json(key + RECORD, {"size": entry.size, "sha256": entry.sha256})
        self.next_index += 1

    def commit(self, rows: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> Manifest:
        """Commit the finished rows (in the order given) and drop the checkpoint parts."""
        final = self.workdir / "final"
        shutil.rmtree(final, ignore_errors=True)
        write_parts(final / DATA_DIR, to_table(rows, self.schema))
        manifest = self.store.upload_dir(final, "", fingerprint=self.fingerprint, extra=extra)
        self.store.delete_prefix(CHECKPOINT_DIR)  # only after the commit: a crash before it keeps them
        return manifest
