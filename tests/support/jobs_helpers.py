"""Helpers for the data-stage tests: job specs, the CLI, and file:// stores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from fathom_jobs.specs import JobSpec


def make_job(stage_type: str, params: dict[str, Any], output: str, **fields: Any) -> JobSpec:
    return JobSpec.model_validate({"recipe": "t", "namespace": "ns", "stage": output.rsplit("/", 1)[-1],
                                   "type": stage_type, "params": params, "output": output, **fields})


def run_cli(job: JobSpec, tmp_path: Path, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`python -m fathom_jobs <type> --spec FILE`, as a Job runs it."""
    spec = tmp_path / f"{job.stage}-spec.json"
    spec.write_text(json.dumps(job.model_dump(by_alias=True, mode="json")))
    full_env = {**os.environ, "FATHOM_CACHE_DIR": str(tmp_path / "cache"), **(env or {})}
    return subprocess.run([sys.executable, "-m", "fathom_jobs", job.type, "--spec", str(spec)],
                          capture_output=True, text=True, env=full_env, cwd=cwd or tmp_path, timeout=300)


def file_uri(path: Path) -> str:
    return "file://" + str(path.resolve())
