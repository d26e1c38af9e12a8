"""Sampling engines: the transformers engine's records; the vLLM engines (against a recording fake
`vllm`): one per GPU group, every prompt in one call per engine, GPU memory freed on close; and the
OpenAI-compatible client against a scripted local server."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from fathom_jobs.engines import (
    Completion,
    EngineError,
    Sampling,
    chat,
    derive_seed,
    engine_options,
    open_engine,
    placement,
    problems_per_call,
)
from fathom_jobs.engines.hf import TransformersEngine
from fathom_jobs.engines.openai_api import EngineConfigError, OpenAIEngine
from fathom_jobs.engines.vllm_engine import LocalReplica, VllmEngine
from fathom_jobs.specs import EvalParams
from tests.support import vllm_fake
from tests.support.openai_stub_server import Reply, StubServer

PROBLEM = chat("Please reason step by step.", "What is 2 + 3?")
OTHER = chat("Please reason step by step.", "Find the sum of all integer bases b > 9.")


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return TransformersEngine(tiny_model_dir, batch_size=4)


def test_transformers_records_are_capped_and_counted(engine):
    [records] = engine.generate([PROBLEM], Sampling(n=3, max_tokens=6, temperature=1.0), seeds=[7])
    assert len(records) == 3
    for record in records:
        assert isinstance(record.text, str)
        if record.finish_reason == "length":
            assert record.tokens == 6
        else:
            assert record.finish_reason == "stop" and 1 <= record.tokens <= 6
    # A random model over a 1k vocabulary almost never ends within 6 tokens.
    assert any(r.finish_reason == "length" for r in records)


def test_transformers_stop_when_the_model_ends(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    digit = tokenizer.convert_tokens_to_ids("7")
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-1e4)
        head.bias[digit] = 10.0  # a head that always says "7": capped
    model.lm_head = head
    engine = TransformersEngine.from_model(model, tokenizer)
    [[capped]] = engine.generate([PROBLEM], Sampling(n=1, max_tokens=4, temperature=0))
    assert capped == Completion(text="7777", tokens=4, finish_reason="length")
    with torch.no_grad():
        head.bias[tokenizer.eos_token_id] = 20.0  # now it ends at once: one token, the end itself
    [[ended]] = engine.generate([PROBLEM], Sampling(n=1, max_tokens=4, temperature=0))
    assert ended == Completion(text="", tokens=1, finish_reason="stop")


def test_seeded_conversations_do_not_depend_on_their_batch(engine):
    sampling = Sampling(n=2, max_tokens=8, temperature=1.0)
    together = engine.generate([PROBLEM, OTHER], sampling, seeds=[1, 2])
    alone = engine.generate([OTHER], sampling, seeds=[2])
    assert together[1] == alone[0]
    assert engine.generate([PROBLEM], sampling, seeds=[1])[0] == together[0]
    assert engine.generate([PROBLEM], sampling, seeds=[3])[0] != together[0]


def test_prompt_uses_the_chat_template_once(engine):
    ids = engine.prompt_ids(PROBLEM)
    text = engine.tokenizer.decode(ids)
    assert ids.count(engine.tokenizer.bos_token_id) == 1
    assert text.startswith(engine.tokenizer.bos_token + "Please reason step by step.")
    assert text.endswith("<｜Assistant｜><think>\n")


def test_derive_seed_is_stable_and_distinct():
    assert derive_seed(0, "abc") == derive_seed(0, "abc")
    assert len({derive_seed(0, f"p{i}") for i in range(100)}) == 100
    assert derive_seed(1, "abc") != derive_seed(0, "abc")


# ------------------------------------------------------------------------------------ vLLM
# Against tests/support/fake_vllm (vllm's LLM / SamplingParams / parallel_state, recording every call;
# chain i of a request seeded s reads "seed s+i", as vLLM seeds a request's n children).
H100 = (80 * 10**9, "NVIDIA H100 80GB HBM3")
QWEN2_32B = {"model_type": "qwen2", "num_hidden_layers": 64, "hidden_size": 5120, "num_attention_heads": 40,
             "num_key_value_heads": 8, "intermediate_size": 27648, "vocab_size": 152064,
             "max_position_embeddings": 131072}


def chains(seed: int, n: int) -> list[str]:
    return [f"seed {seed + i}" for i in range(n)]


class InProcessEngines:
    """Starts a multi-GPU pod's engines in this process (instead of one process each) and records
    which GPUs each one was given."""

    def __init__(self) -> None:
        self.groups: list[list[str]] = []

    def __call__(self, devices: list[str], options: dict) -> LocalReplica:
        self.groups.append(devices)
        return LocalReplica(devices, options)


@pytest.fixture
def fake_vllm(monkeypatch, tmp_path):
    yield from vllm_fake.installed(monkeypatch, tmp_path)


@pytest.fixture
def h100s(monkeypatch):
    monkeypatch.setattr(placement, "gpu_memory", lambda: H100)


@pytest.fixture
def in_process(monkeypatch) -> InProcessEngines:
    engines = InProcessEngines()
    monkeypatch.setattr(VllmEngine, "spawn_replica", engines)
    return engines


def shaped_like(tiny_model_dir: Path, tmp_path: Path, config: dict) -> Path:
    """The tiny tokenizer with a bigger model's config.json (placement reads only the config)."""
    model = tmp_path / "shaped"
    model.mkdir()
    for path in tiny_model_dir.iterdir():
        if path.name != "config.json" and not path.name.endswith(".safetensors"):
            shutil.copy(path, model / path.name)
    (model / "config.json").write_text(json.dumps(config))
    return model


def test_one_gpu_runs_one_engine_in_this_process(engine, fake_vllm, tiny_model_dir):
    vllm_engine = open_engine("vllm", tiny_model_dir, gpus=1, seed=3, max_model_len=4096, gpu_memory_utilization=0.85,
                              kv_cache_dtype="fp8", enable_prefix_caching=False)
    sampling = Sampling(n=3, max_tokens=6000, temperature=0.6, top_p=0.95)
    seeds = [derive_seed(0, "a"), derive_seed(0, "b")]
    results = vllm_engine.generate([PROBLEM, OTHER], sampling, seeds=seeds)

    [load] = fake_vllm.events("LLM")
    assert load["pid"] == os.getpid()
    assert load["kwargs"] == dict(model=str(tiny_model_dir), tensor_parallel_size=1, seed=3, dtype="auto",
                                  gpu_memory_utilization=0.85, kv_cache_dtype="fp8", enable_prefix_caching=False,
                                  max_model_len=4096)
    [call] = fake_vllm.events("generate")
    # Token ids from the same chat template as the transformers engine: one BOS, no re-tokenising.
    assert call["prompt_token_ids"] == [engine.prompt_ids(PROBLEM), engine.prompt_ids(OTHER)]
    assert call["params"] == [dict(n=3, max_tokens=6000, seed=s, temperature=0.6, top_p=0.95) for s in seeds]
    assert call["options"] == {"use_tqdm": False}
    assert [[c.text for c in r] for r in results] == [chains(seeds[0], 3), chains(seeds[1], 3)]
    first = seeds[0]
    assert results[0][0] == Completion(f"seed {first}", 3 + first % 5, "length" if first % 5 == 0 else "stop")
    vllm_engine.close()


def test_stage_settings_reach_the_engine(fake_vllm, tiny_model_dir):
    params = EvalParams(models=["base"], gpuMemoryUtilization=0.8, kvCacheDtype="fp8", enablePrefixCaching=False,
                        seed=5)
    options = engine_options(params, tiny_model_dir)
    # maxTokens 16,384 + the 4,096 prompt budget, cut to the tiny model's 4,096 positions.
    assert options == dict(seed=5, max_model_len=4096, gpu_memory_utilization=0.8, tensor_parallel_size=None,
                           kv_cache_dtype="fp8", enable_prefix_caching=False)
    assert engine_options(params.model_copy(update={"engine": "transformers"}), tiny_model_dir) == {}
    assert problems_per_call(64, "vllm") == 128 and problems_per_call(8, "vllm") == 1024
    open_engine("vllm", tiny_model_dir, gpus=1, **options).close()
    assert fake_vllm.events("LLM")[0]["kwargs"]["max_model_len"] == 4096


def test_eight_gpus_run_eight_engines_each_given_its_share_in_one_call(fake_vllm, h100s, in_process, tiny_model_dir):
    vllm_engine = open_engine("vllm", tiny_model_dir, gpus=8)
    assert in_process.groups == [[str(i)] for i in range(8)]
    assert [e["kwargs"]["tensor_parallel_size"] for e in fake_vllm.events("LLM")] == [1] * 8

    conversations = [chat("Reason.", f"Problem {i}") for i in range(20)]
    seeds = [1000 + 10 * i for i in range(20)]
    results = vllm_engine.generate(conversations, Sampling(n=4, max_tokens=100), seeds=seeds)
    calls = fake_vllm.events("generate")
    assert [len(c["params"]) for c in calls] == [3, 3, 3, 3, 2, 2, 2, 2]  # one call per engine, 20 prompts
    assert [[c.text for c in r] for r in results] == [chains(s, 4) for s in seeds]
    vllm_engine.close()
    assert len(fake_vllm.events("LLM freed")) == 8


def test_a_32b_model_runs_four_engines_of_two_gpus(fake_vllm, h100s, in_process, tiny_model_dir, tmp_path,
                                                   monkeypatch):
    model = shaped_like(tiny_model_dir, tmp_path, QWEN2_32B)
    open_engine("vllm", model, gpus=8, max_model_len=16384 + 4096).close()
    assert in_process.groups == [["0", "1"], ["2", "3"], ["4", "5"], ["6", "7"]]
    assert [e["kwargs"]["tensor_parallel_size"] for e in fake_vllm.events("LLM")] == [2] * 4
    # tensorParallelSize set: 8 GPUs / 4 = 2 engines, on the GPUs the pod was given.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "8,9,10,11,12,13,14,15")
    in_process.groups.clear()
    open_engine("vllm", model, gpus=8, tensor_parallel_size=4).close()
    assert in_process.groups == [["8", "9", "10", "11"], ["12", "13", "14", "15"]]


def test_a_problems_64_samples_spread_over_every_engine_and_come_back_in_order(fake_vllm, h100s, in_process,
                                                                               tiny_model_dir):
    vllm_engine = open_engine("vllm", tiny_model_dir, gpus=8)
    results = vllm_engine.generate([PROBLEM, OTHER, PROBLEM], Sampling(n=64, max_tokens=100), seeds=[7, 500, 90])
    calls = fake_vllm.events("generate")
    # 3 problems x 64 chains = 24 requests of 8 (seeds s, s+8, ..., s+56): 3 per engine, one call each.
    assert [len(c["params"]) for c in calls] == [3] * 8
    assert sorted(p["seed"] for c in calls for p in c["params"]) == sorted(
        s + 8 * j for s in (7, 500, 90) for j in range(8))
    assert {p["n"] for c in calls for p in c["params"]} == {8}
    # The chains vLLM would return for one request of n = 64 (children seeded seed + i), in order.
    assert [[c.text for c in r] for r in results] == [chains(7, 64), chains(500, 64), chains(90, 64)]
    vllm_engine.close()


def test_close_frees_gpu_memory_before_the_next_engine_loads(fake_vllm, tiny_model_dir, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: fake_vllm.module.record("empty_cache"))
    first = open_engine("vllm", tiny_model_dir, gpus=1)
    first.generate([PROBLEM], Sampling(n=1, max_tokens=5))
    first.close()
    second = open_engine("vllm", tiny_model_dir, gpus=1)
    assert [e["event"] for e in fake_vllm.events() if e["event"] != "generate"] == [
        "LLM", "engine core shutdown", "LLM freed", "destroy_model_parallel", "destroy_distributed_environment",
        "empty_cache", "LLM"]
    with pytest.raises(EngineError, match="closed"):
        first.generate([PROBLEM], Sampling())
    second.close()


def test_engines_run_in_their_own_processes_on_their_own_gpus(fake_vllm, h100s, tiny_model_dir):
    vllm_engine = open_engine("vllm", tiny_model_dir, gpus=2)
    processes = [replica.process for replica in vllm_engine.replicas]
    try:
        results = vllm_engine.generate([PROBLEM, OTHER, PROBLEM], Sampling(n=2, max_tokens=8), seeds=[10, 20, 30])
    finally:
        vllm_engine.close()
    loads = fake_vllm.events("LLM")
    assert sorted(e["devices"] for e in loads) == ["0", "1"]
    assert len({e["pid"] for e in loads}) == 2 and os.getpid() not in {e["pid"] for e in loads}
    assert sorted((c["devices"], len(c["params"])) for c in fake_vllm.events("generate")) == [("0", 2), ("1", 1)]
    assert [[c.text for c in r] for r in results] == [chains(10, 2), chains(20, 2), chains(30, 2)]
    # Closed: each engine tore vLLM's distributed state down and its process is gone.
    assert sorted(e["devices"] for e in fake_vllm.events("destroy_distributed_environment")) == ["0", "1"]
    assert [p.exitcode for p in processes] == [0, 0]


def test_an_engine_that_cannot_load_stops_the_stage_with_its_reason(fake_vllm, h100s, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_FAIL_ON_DEVICES", "1")
    with pytest.raises(EngineError, match="vLLM engine on GPUs 1: RuntimeError: CUDA out of memory"):
        open_engine("vllm", tiny_model_dir, gpus=2)
    # The engine that did load was closed with it.
    assert [e["devices"] for e in fake_vllm.events("destroy_model_parallel")] == ["0"]


# ----------------------------------------------------------------------------- OpenAI API
def _engine(server: StubServer, **options) -> OpenAIEngine:
    defaults = dict(api_key="sk-test", max_concurrency=4, timeout_s=0.5, max_attempts=3, backoff_base_s=0.01)
    return OpenAIEngine(server.base_url, "judge-model", **{**defaults, **options})


def test_openai_retries_429_500_and_slow_replies():
    def reply(body, call):
        content = body["messages"][-1]["content"]
        if content == "rate" and call == 0:
            return Reply(status=429, headers={"retry-after": "0"})
        if content == "flaky" and call == 0:
            return Reply(status=500)
        if content == "slow" and call == 0:
            return Reply(content="late", delay_s=1.5)
        if content == "long":
            return Reply(content="cut", finish_reason="length", completion_tokens=50)
        return Reply(content=f"ok {content}")

    with StubServer(reply) as server:
        engine = _engine(server)
        prompts = [[{"role": "user", "content": c}] for c in ("rate", "flaky", "slow", "long", "fine")]
        results = engine.generate(prompts, Sampling(n=1, max_tokens=64, temperature=None, top_p=None), seeds=[1] * 5)
    assert [r[0].text for r in results] == ["ok rate", "ok flaky", "ok slow", "cut", "ok fine"]
    assert results[3][0] == Completion("cut", 50, "length")
    assert results[0][0] == Completion("ok rate", 7, "stop")
    assert engine.stats["retries"] == 3
    first = server.requests[0]
    assert first["path"] == "/v1/chat/completions" and first["authorization"] == "Bearer sk-test"
    assert first["body"]["model"] == "judge-model" and first["body"]["max_completion_tokens"] == 64
    assert "temperature" not in first["body"]  # o-series models reject it; None means "leave it out"


def test_openai_bad_request_is_kept_per_item_and_auth_failure_stops():
    def reply(body, call):
        content = body["messages"][-1]["content"]
        return Reply(status=400) if content == "too long" else Reply(content="fine")

    with StubServer(reply) as server:
        results = _engine(server).generate([[{"role": "user", "content": c}] for c in ("too long", "ok")],
                                           Sampling(n=1, max_tokens=8))
    assert results[0][0].error == "HTTP 400: stub error 400" and results[0][0].text == ""
    assert results[1][0].text == "fine"

    with StubServer(lambda body, call: Reply(status=401)) as server:
        with pytest.raises(EngineConfigError, match="401"):
            _engine(server).generate([[{"role": "user", "content": "x"}]], Sampling())


def test_openai_gives_up_after_max_attempts():
    with StubServer(lambda body, call: Reply(status=503)) as server:
        with pytest.raises(EngineError, match="HTTP 503 after 3 attempts"):
            _engine(server).generate([[{"role": "user", "content": "x"}]], Sampling())
        assert len(server.requests) == 3


def test_openai_concurrency_and_rate_limit():
    in_flight, peak, lock = [0], [0], threading.Lock()

    def reply(body, call):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.05)
        with lock:
            in_flight[0] -= 1
        return Reply(content="ok")

    prompts = [[{"role": "user", "content": str(i)}] for i in range(8)]
    with StubServer(reply) as server:
        _engine(server, max_concurrency=2).generate(prompts, Sampling())
    assert peak[0] == 2
    with StubServer(lambda body, call: Reply(content="ok")) as server:
        started = time.monotonic()
        _engine(server, requests_per_minute=600).generate(prompts[:5], Sampling())
        elapsed = time.monotonic() - started
    assert elapsed >= 0.4  # 600/min: starts 0.1 s apart


def test_openai_n_samples_are_separate_seeded_requests():
    with StubServer(lambda body, call: Reply(content=f"seed {body['seed']}")) as server:
        [texts] = _engine(server).generate([[{"role": "user", "content": "q"}]], Sampling(n=3, seed=10))
    assert sorted(c.text for c in texts) == ["seed 10", "seed 11", "seed 12"]
