"""A stand-in for vLLM's offline API (`LLM`, `SamplingParams`, `vllm.distributed.parallel_state`)
that records what the engine asks of it. Tests put tests/support/fake_vllm first on sys.path;
engine processes spawned from the test inherit that path, so they load this module too.

Every event goes to EVENTS and, when $FAKE_VLLM_LOG names a file, to that file as one JSON line,
with the process id and the CUDA_VISIBLE_DEVICES the process runs under. Like vLLM, a request
with n > 1 fans out into n chains seeded seed + i; each chain's text names its seed ("seed 17", or
$FAKE_VLLM_TEXT formatted with it), so a test can check which chain came back where.
"""

from __future__ import annotations

import json
import os
import weakref
from types import SimpleNamespace

EVENTS: list[dict] = []


def record(event: str, **fields) -> None:
    entry = {"event": event, "pid": os.getpid(), "devices": os.environ.get("CUDA_VISIBLE_DEVICES"), **fields}
    EVENTS.append(entry)
    path = os.environ.get("FAKE_VLLM_LOG")
    if path:
        with open(path, "a") as log:
            log.write(json.dumps(entry) + "\n")


def chain(seed: int) -> SimpleNamespace:
    text = os.environ.get("FAKE_VLLM_TEXT", "seed {seed}").format(seed=seed)
    return SimpleNamespace(text=text, token_ids=list(range(3 + seed % 5)),
                           finish_reason="length" if seed % 5 == 0 else "stop")


class SamplingParams:
    def __init__(self, **kwargs) -> None:
        self.kwargs = kwargs


class LLM:
    def __init__(self, **kwargs) -> None:
        if os.environ.get("CUDA_VISIBLE_DEVICES") and \
                os.environ.get("CUDA_VISIBLE_DEVICES") == os.environ.get("FAKE_VLLM_FAIL_ON_DEVICES"):
            raise RuntimeError("CUDA out of memory")
        record("LLM", kwargs=kwargs)
        self.llm_engine = SimpleNamespace(engine_core=SimpleNamespace(shutdown=lambda: record("engine core shutdown")))
        weakref.finalize(self, record, "LLM freed")

    def generate(self, prompts, sampling_params, **kwargs):
        record("generate", prompt_token_ids=[p["prompt_token_ids"] for p in prompts],
               params=[p.kwargs for p in sampling_params], options=kwargs)
        return [SimpleNamespace(outputs=[chain(p.kwargs["seed"] + i) for i in range(p.kwargs["n"])])
                for p in sampling_params]
