"""Each job's log in the store at `<output>/_logs/attempt-<N>/pod-<i>.log` (fathom_jobs.joblog): on
success and failure, redacted, beside the output and never part of it, best effort."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fathom_jobs import joblog
from fathom_jobs.__main__ import main
from fathom_jobs.inputs import store_for
from fathom_jobs.joblog import log_uri, pod_index, read_log
from fathom_jobs.memo import job_output
from fathom_jobs.specs import JobSpec
from fathom_jobs.stages import prepare
from tests.support.jobs_helpers import file_uri, make_job


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FATHOM_CACHE_DIR", str(tmp_path / "cache"))


def run(job: JobSpec | dict, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """`python -m fathom_jobs <type> --spec FILE` as a pod runs it (env: the pod's extra variables)."""
    doc = job.model_dump(by_alias=True, mode="json") if isinstance(job, JobSpec) else job
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(doc))
    full_env = {k: v for k, v in os.environ.items() if k not in ("JOB_COMPLETION_INDEX", "NODE_RANK")}
    full_env.update({"FATHOM_CACHE_DIR": str(tmp_path / "cache"), **env})
    return subprocess.run([sys.executable, "-m", "fathom_jobs", doc["type"], "--spec", str(spec)],
                          capture_output=True, text=True, env=full_env, cwd=tmp_path, timeout=120)


def test_the_log_contract():
    assert log_uri("s3://b/ns/r/sft/", 3, 1) == "s3://b/ns/r/sft/_logs/attempt-3/pod-1.log"
    assert log_uri("file:///x/ns/r/solve", 0, 0) == "file:///x/ns/r/solve/_logs/attempt-0/pod-0.log"
    assert pod_index({}) == 0
    assert pod_index({"JOB_COMPLETION_INDEX": "4"}) == 4
    assert pod_index({"NODE_RANK": "2"}) == 2
    assert pod_index({"JOB_COMPLETION_INDEX": "1", "NODE_RANK": "1"}) == 1


def test_a_successful_job_leaves_its_log_beside_its_output(tmp_path):
    job = make_job("prepare", {"sources": [{"uri": "aime24"}], "decontaminate": []},
                   file_uri(tmp_path / "store" / "corpus"), attempt=2)
    result = run(job, tmp_path, JOB_COMPLETION_INDEX="1")
    assert result.returncode == 0, result.stderr
    log = read_log(store_for, job.output, 2, 1)
    assert log is not None and "prepare: kept 30 of 30 problems" in log  # the job's own output
    assert "prepare: kept" in result.stdout  # and the pod's log still gets it
    store = store_for(job.output)
    # Beside the output, never part of it: the manifest does not list it and the memo still holds.
    assert not any(path.startswith("_logs/") for path in store.read_manifest().files)
    assert job_output(job)[2]
    assert not list((tmp_path / "cache" / "joblog").iterdir())  # the local copy goes once uploaded

    again = run(job.model_copy(update={"attempt": 3}), tmp_path)  # memoized: nothing to do, still a log
    assert again.returncode == 0, again.stderr
    assert "complete for these inputs; nothing to do" in read_log(store_for, job.output, 3, 0)
    assert read_log(store_for, job.output, 2, 1) == log  # a later attempt keeps the earlier one's
    assert read_log(store_for, job.output, 4, 0) is None


def test_a_failed_job_leaves_its_log_with_the_reason(tmp_path):
    job = make_job("prepare", {"sources": [{"uri": "file://./nowhere.jsonl"}]}, file_uri(tmp_path / "store" / "x"))
    result = run(job, tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "nowhere.jsonl" in result.stderr  # still one line
    log = read_log(store_for, job.output, 0, 0)
    assert log is not None and log.strip().splitlines()[-1] == result.stderr.strip()


def test_a_crash_leaves_its_traceback_in_the_log(tmp_path, monkeypatch):
    def crash(job):
        print("working on it")
        raise RuntimeError("the stage fell over")

    monkeypatch.setattr(prepare, "run", crash)
    # As in a real process, Python's streams write to file descriptors 1 and 2 (pytest's do not).
    monkeypatch.setattr(sys, "stdout", open(1, "w", closefd=False))  # noqa: SIM115
    monkeypatch.setattr(sys, "stderr", open(2, "w", closefd=False))  # noqa: SIM115
    job = make_job("prepare", {"sources": [{"uri": "aime24"}]}, file_uri(tmp_path / "store" / "corpus"))
    spec = tmp_path / "spec.json"
    spec.write_text(job.model_dump_json(by_alias=True))
    assert main(["prepare", "--spec", str(spec)]) == 1
    log = read_log(store_for, job.output, 0, 0)
    assert log is not None and "working on it" in log
    assert "Traceback" in log and "RuntimeError: the stage fell over" in log


def test_secrets_are_redacted_in_the_stored_log(tmp_path):
    path = tmp_path / "pod.log"
    path.write_text("endpoint s3://AKIAABCDEFGHIJKLMNOP:wJalrXUtnFEMI@bucket/x\n"
                    "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMIK7MDENGbPxRfiCY\nstep 3 loss 0.5\n")
    stored = joblog.stored_text(path).decode()
    assert "wJalr" not in stored and "AKIAABCDEFGHIJKLMNOP" not in stored
    assert stored.splitlines()[-1] == "step 3 loss 0.5"


def test_a_long_log_keeps_its_head_and_tail(tmp_path):
    path = tmp_path / "pod.log"
    path.write_bytes(b"first line\n" + b"x" * 5000 + b"\nlast line\n")
    stored = joblog.stored_text(path, max_bytes=1000).decode()
    assert stored.startswith("first line") and stored.endswith("last line\n") and "bytes left out" in stored


def test_an_unreachable_store_does_not_change_the_exit_code(tmp_path):
    job = make_job("prepare", {"sources": [{"uri": "aime24"}], "maxProblems": -1}, "s3://bucket/ns/r/corpus",
                   storage={"endpoint": "http://127.0.0.1:9"})  # nothing listens on the discard port
    result = run(job.model_dump(by_alias=True, mode="json"), tmp_path,
                 AWS_ACCESS_KEY_ID="AKIAABCDEFGHIJKLMNOP", AWS_SECRET_ACCESS_KEY="not-a-secret")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert "could not upload this log to s3://bucket/ns/r/corpus/_logs/attempt-0/pod-0.log" in result.stderr
    assert "maxProblems" in lines[-1] and lines[0] == lines[-1]  # the reason stays the last line


def test_through_s3(tmp_path, s3_env, s3_server):
    s3_server.create_bucket("fathom-logs")
    job = make_job("prepare", {"sources": [{"uri": "aime24"}], "maxProblems": -1}, "s3://fathom-logs/ns/r/corpus",
                   storage={"endpoint": s3_server.endpoint})
    result = run(job.model_dump(by_alias=True, mode="json"), tmp_path)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0  # bad input, log uploaded
    log = read_log(lambda uri: store_for(uri, job.storage), job.output, 0, 0)
    assert log is not None and "maxProblems" in log
