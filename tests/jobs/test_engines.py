"""Sampling engines: the transformers engine's records, the vLLM call shape (against a fake
`vllm` module), and the OpenAI-compatible client against a scripted local server."""

from __future__ import annotations

import sys
import threading
import time
import types

import pytest

from fathom_jobs.engines import Completion, EngineError, Sampling, chat, derive_seed, open_engine
from fathom_jobs.engines.hf import TransformersEngine
from fathom_jobs.engines.openai_api import EngineConfigError, OpenAIEngine
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
class FakeVllm(types.ModuleType):
    """Records how the engine constructs LLM and SamplingParams and calls generate."""

    def __init__(self, tokenizer):
        super().__init__("vllm")
        self.llm_kwargs: dict = {}
        self.sampling_kwargs: list[dict] = []
        self.generate_calls: list[tuple] = []
        fake = self

        class SamplingParams:
            def __init__(self, **kwargs):
                fake.sampling_kwargs.append(kwargs)
                self.kwargs = kwargs

        class LLM:
            def __init__(self, **kwargs):
                fake.llm_kwargs = kwargs

            def get_tokenizer(self):
                return tokenizer

            def generate(self, prompts, sampling_params, **kwargs):
                fake.generate_calls.append((prompts, sampling_params, kwargs))
                outputs = []
                for params in sampling_params:
                    n = params.kwargs["n"]
                    completions = [types.SimpleNamespace(text=f"chain {j}", token_ids=list(range(3 + j)),
                                                         finish_reason="length" if j == 0 else "stop")
                                   for j in range(n)]
                    outputs.append(types.SimpleNamespace(outputs=completions))
                return outputs

        self.LLM, self.SamplingParams = LLM, SamplingParams


def test_vllm_engine_call_shape(engine, monkeypatch, tiny_model_dir):
    fake = FakeVllm(engine.tokenizer)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    vllm_engine = open_engine("vllm", tiny_model_dir, gpus=4)
    sampling = Sampling(n=3, max_tokens=6000, temperature=0.6, top_p=0.95)
    seeds = [derive_seed(0, "a"), derive_seed(0, "b")]
    results = vllm_engine.generate([PROBLEM, OTHER], sampling, seeds=seeds)

    assert fake.llm_kwargs["model"] == str(tiny_model_dir)
    assert fake.llm_kwargs["tensor_parallel_size"] == 4
    assert fake.sampling_kwargs == [dict(n=3, max_tokens=6000, seed=s, temperature=0.6, top_p=0.95) for s in seeds]
    [(prompts, params, kwargs)] = fake.generate_calls
    # Token ids from the same chat template as the transformers engine: one BOS, no re-tokenising.
    assert prompts == [{"prompt_token_ids": engine.prompt_ids(PROBLEM)}, {"prompt_token_ids": engine.prompt_ids(OTHER)}]
    assert kwargs == {"use_tqdm": False}
    assert results[0] == [Completion("chain 0", 3, "length"), Completion("chain 1", 4, "stop"),
                          Completion("chain 2", 5, "stop")]


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
