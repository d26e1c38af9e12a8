"""annotate against a scripted OpenAI-compatible server: ratings, malformed replies, 429/500/slow
replies, a 400 kept per row, resume after a crash, and the CLI; and a local vLLM judge (fake vllm)."""

from __future__ import annotations

import json
import re

import pytest

from fathom_jobs.datasets import PROBLEMS, read_rows, write_dataset
from fathom_jobs.engines import EngineError
from fathom_jobs.inputs import store_for
from fathom_jobs.stages import annotate
from fathom_jobs.stages.annotate import parse_difficulty
from tests.support import vllm_fake
from tests.support.jobs_helpers import file_uri, make_job, run_cli
from tests.support.openai_stub_server import Reply, StubServer

# What the scripted judge does with each problem (the marker is in the problem text).
PROBLEMS_BY_MARKER = {
    "easy": "Difficulty: 2", "medium": "Let me think.\nDifficulty: 6", "bold": "**Difficulty:** 9/10",
    "malformed": "This one is quite hard, maybe an eight?", "rate-limited": "Difficulty: 4",
    "server-error": "Difficulty: 5", "slow": "Difficulty: 7", "rejected": None, "bare": "3",
}


@pytest.fixture(autouse=True)
def fast_http(tmp_path, monkeypatch):
    monkeypatch.setenv("FATHOM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("FATHOM_HTTP_TIMEOUT_S", "0.5")
    monkeypatch.setenv("FATHOM_HTTP_BACKOFF_S", "0.01")
    monkeypatch.setenv("FATHOM_HTTP_MAX_ATTEMPTS", "3")
    monkeypatch.setenv("FATHOM_CHECKPOINT_ROWS", "3")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-judge")


def marker(body: dict) -> str:
    return re.search(r"Problem about (\S+)\.", body["messages"][-1]["content"]).group(1)


def judge(body: dict, call: int) -> Reply:
    name = marker(body)
    if name == "rate-limited" and call == 0:
        return Reply(status=429, headers={"retry-after": "0"})
    if name == "server-error" and call == 0:
        return Reply(status=500)
    if name == "slow" and call == 0:
        return Reply(content="Difficulty: 1", delay_s=1.5)  # past the 0.5 s timeout: retried
    if name == "rejected":
        return Reply(status=400)
    return Reply(content=PROBLEMS_BY_MARKER[name])


def problems_dataset(tmp_path) -> str:
    rows = [{"id": f"p{i}", "problem": f"Problem about {name}. Compute x.", "answer": str(i), "solution": None,
             "source": "test"} for i, name in enumerate(PROBLEMS_BY_MARKER)]
    uri = file_uri(tmp_path / "store" / "corpus")
    write_dataset(store_for(uri), rows, PROBLEMS, fingerprint="corpus")
    return uri


def annotate_job(tmp_path, server: StubServer, data: str, **judge_fields):
    params = {"data": data, "judge": {"endpoint": server.base_url, "model": "o3-mini", "maxConcurrency": 4,
                                      **judge_fields}}
    return make_job("annotate", params, file_uri(tmp_path / "store" / "difficulty"))


EXPECTED = {"p0": 2, "p1": 6, "p2": 9, "p3": None, "p4": 4, "p5": 5, "p6": 7, "p7": None, "p8": 3}


def test_annotate_rates_retries_and_keeps_raw_replies(tmp_path):
    data = problems_dataset(tmp_path)
    with StubServer(judge) as server:
        job = annotate_job(tmp_path, server, data)
        annotate.run(job)
    rows = read_rows(job.output)
    assert [r["id"] for r in rows] == [f"p{i}" for i in range(9)]  # input order
    assert {r["id"]: r["difficulty"] for r in rows} == EXPECTED
    assert rows[3]["difficulty_raw"] == "This one is quite hard, maybe an eight?"
    assert rows[7]["difficulty_raw"] == "error: HTTP 400: stub error 400"
    assert rows[0]["answer"] == "0" and rows[0]["source"] == "test"  # problem columns carried over
    metrics = json.loads((tmp_path / "store" / "difficulty" / "metrics.json").read_text())
    assert (metrics["rated"], metrics["unparseable"], metrics["failed"]) == (7, 1, 1)
    assert metrics["requests"]["retries"] == 3
    body = server.requests[0]["body"]
    assert body["model"] == "o3-mini" and body["max_completion_tokens"] == 4096
    assert server.requests[0]["authorization"] == "Bearer sk-judge"
    assert "Answer with exactly one line" in body["messages"][0]["content"]


def test_annotate_resumes_after_a_crash_without_asking_again(tmp_path, monkeypatch):
    data = problems_dataset(tmp_path)
    monkeypatch.setenv("FATHOM_CHECKPOINT_ROWS", "4")

    def broken_after_first_part(body, call):  # the endpoint dies for every row past the first 4
        return judge(body, call) if list(PROBLEMS_BY_MARKER).index(marker(body)) < 4 else Reply(status=503)

    out = tmp_path / "store" / "difficulty"
    with StubServer(broken_after_first_part) as server:
        job = annotate_job(tmp_path, server, data)
        with pytest.raises(EngineError, match="503"):
            annotate.run(job)
        assert not (out / "_MANIFEST.json").exists()
        assert [p.name for p in (out / "checkpoint").glob("part-*.parquet")] == ["part-00000.parquet"]

        server.reply, server.requests = judge, []  # the endpoint recovers; the Job restarts
        annotate.run(job)
    asked = {marker(r["body"]) for r in server.requests}
    assert asked == set(list(PROBLEMS_BY_MARKER)[4:])  # the first 4 were not asked again
    assert {r["id"]: r["difficulty"] for r in read_rows(job.output)} == EXPECTED
    assert not (out / "checkpoint").exists()


def test_parameters_changed_means_no_resume(tmp_path):
    data = problems_dataset(tmp_path)
    with StubServer(judge) as server:
        annotate.run(annotate_job(tmp_path, server, data))
        annotate.run(annotate_job(tmp_path, server, data))  # same inputs: memoized, no requests
        assert len({marker(r["body"]) for r in server.requests}) == 9
        before = len(server.requests)
        annotate.run(annotate_job(tmp_path, server, data, maxTokens=100))
        assert len(server.requests) - before >= 9


@pytest.mark.parametrize("reply,expected", [
    ("Difficulty: 7", 7), ("difficulty = 10", 10), ("**Difficulty:** 3/10", 3), ("7", 7), ("  4/10 ", 4),
    ("Difficulty: 3\n...on reflection, Difficulty: 5", 5), ("Difficulty: 6.5", None), ("Difficulty: 11", None),
    ("Difficulty: 0", None), ("It is a 7 or so", None), ("", None), ("7 8", None),
])
def test_parse_difficulty_is_strict(reply, expected):
    assert parse_difficulty(reply) == expected


def test_cli_annotates_and_rejects_a_bad_key(tmp_path):
    data = problems_dataset(tmp_path)
    env = {"FATHOM_HTTP_TIMEOUT_S": "0.5", "FATHOM_HTTP_BACKOFF_S": "0.01", "OPENAI_API_KEY": "sk-judge"}
    with StubServer(judge) as server:
        result = run_cli(annotate_job(tmp_path, server, data), tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert {r["id"]: r["difficulty"] for r in read_rows(file_uri(tmp_path / "store" / "difficulty"))} == EXPECTED

    with StubServer(lambda body, call: Reply(status=401)) as server:
        result = run_cli(make_job("annotate", {"data": data, "judge": {"endpoint": server.base_url}},
                                  file_uri(tmp_path / "store" / "other")), tmp_path, env=env)
    assert result.returncode == 2
    assert result.stderr.startswith("fathom annotate: ") and "401" in result.stderr
    assert result.stderr.strip().count("\n") == 0


@pytest.fixture
def fake_vllm(monkeypatch, tmp_path):
    yield from vllm_fake.installed(monkeypatch, tmp_path)


def test_a_local_vllm_judge_rates_every_problem_in_one_call(tmp_path, tiny_model_dir, fake_vllm, monkeypatch):
    monkeypatch.delenv("FATHOM_CHECKPOINT_ROWS")
    monkeypatch.setenv("FAKE_VLLM_TEXT", "Difficulty: {seed}")  # the fake judge rates problem i as i (seed i)
    data = problems_dataset(tmp_path)
    judge = {"backend": "vllm", "model": file_uri(tiny_model_dir), "gpuMemoryUtilization": 0.7,
             "kvCacheDtype": "fp8", "enablePrefixCaching": False, "maxTokens": 512}
    job = make_job("annotate", {"data": data, "judge": judge}, file_uri(tmp_path / "store" / "difficulty"),
                   gpusPerNode=1)
    annotate.run(job)
    [load] = fake_vllm.events("LLM")
    assert load["kwargs"] == dict(model=str(tiny_model_dir), tensor_parallel_size=1, seed=0, dtype="auto",
                                  gpu_memory_utilization=0.7, kv_cache_dtype="fp8", enable_prefix_caching=False,
                                  max_model_len=4096)  # 512 + 4,096, within the tiny model's 4,096 positions
    [call] = fake_vllm.events("generate")
    assert len(call["params"]) == 9 and call["params"][0]["temperature"] == 0.0  # all 9, greedy
    # Seed 0 reads "Difficulty: 0": out of range, so unrated.
    assert {r["id"]: r["difficulty"] for r in read_rows(job.output)} == {f"p{i}": i or None for i in range(9)}
    assert "destroy_model_parallel" in [e["event"] for e in fake_vllm.events()]
