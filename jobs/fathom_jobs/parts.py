"""Resumable outputs: rows checkpointed to the store in small parts as a stage produces them.

A long stage (annotate, solve-rate) uploads `checkpoint/part-NNNNN.parquet` every few rows. A
restarted attempt downloads the parts already there, skips their rows and carries on. When every
row is done, the rows are written in input order as `data/part-*.parquet`, committed with the
manifest, and the checkpoint parts are removed. `checkpoint/fingerprint.json` records the inputs
the parts were made from, so parts from a run with other parameters are discarded, not resumed.
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
from .store import Manifest, Store

log = logging.getLogger("fathom_jobs.parts")
CHECKPOINT_ENV = "FATHOM_CHECKPOINT_ROWS"
CHECKPOINT_DIR = "checkpoint"
MARKER = f"{CHECKPOINT_DIR}/fingerprint.json"
_PART = re.compile(r"^part-(\d{5})\.parquet$")


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
        marker = self.store.read_json(MARKER) if self.store.exists(MARKER) else None
        if not marker or marker.get("fingerprint") != self.fingerprint:
            if marker:
                log.info("discarding checkpoint parts made from other inputs under %s", self.store.uri)
            self.store.delete_prefix(CHECKPOINT_DIR)
            self.store.write_json(MARKER, {"fingerprint": self.fingerprint})
            return []
        rows: list[dict[str, Any]] = []
        for key in self.store.list(CHECKPOINT_DIR):
            match = _PART.match(key.rsplit("/", 1)[-1])
            if not match:
                continue
            local = self.workdir / key
            self.store.download_file(key, local)
            rows += pq.read_table(local).cast(self.schema).to_pylist()
            self.next_index = max(self.next_index, int(match.group(1)) + 1)
        log.info("resuming %s: %d rows in %d parts already done", self.store.uri, len(rows), self.next_index)
        return rows

    def append(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        [path] = write_parts(self.local_parts, to_table(rows, self.schema), rows_per_part=len(rows),
                             start=self.next_index)
        self.store.upload_file(path, f"{CHECKPOINT_DIR}/{path.name}")
        self.next_index += 1

    def commit(self, rows: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> Manifest:
        """Commit the finished rows (in the order given) and drop the checkpoint parts."""
        final = self.workdir / "final"
        shutil.rmtree(final, ignore_errors=True)
        write_parts(final / DATA_DIR, to_table(rows, self.schema))
        manifest = self.store.upload_dir(final, "", fingerprint=self.fingerprint, extra=extra)
        self.store.delete_prefix(CHECKPOINT_DIR)  # only after the commit: a crash before it keeps them
        return manifest
