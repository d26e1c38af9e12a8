"""Sampling engines: one interface, three backends.

- `vllm`: offline `vllm.LLM.generate` on GPUs (GPU images only; imported there and nowhere else):
  GPUs / TP engines per pod, TP the smallest that fits (`placement`, `vllm_engine`).
- `transformers`: `model.generate` on CPU or one GPU (tests, local runs, the CPU demo).
- `openai`: any OpenAI-compatible chat-completions endpoint (judges served elsewhere).

Every engine takes chat conversations (lists of {role, content}) and returns, per conversation,
`n` `Completion` records: the text after the generation prompt, the number of generated tokens
(the end-of-sequence token included, as vLLM counts it) and `finish_reason` — `length` when the
token cap stopped the chain, `stop` otherwise. Per-conversation seeds make a conversation's
samples independent of which other conversations share its batch, so a sharded run and an
unsharded run draw the same chains.

How a stage should call it (continuous batching): open the engine once with `engine_options` (the
stage's vLLM knobs and a context of maxTokens + a prompt budget), then hand `generate` as many
conversations as it can at once - `problems_per_call(samples, backend)` of them, ~8,192 chains for
vLLM - and checkpoint after each call. vLLM keeps every engine's batch full until the call's last
chain ends, so a call waits on its longest chain only once; a restarted pod loses at most one call.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from ..specs import Judge, SamplingParams

Message = dict[str, str]
Conversation = list[Message]


@dataclass(frozen=True)
class Completion:
    text: str
    tokens: int
    finish_reason: Literal["stop", "length"]
    # Set when an API refused this one request for good (e.g. 400); text is then empty.
    error: str | None = None


@dataclass(frozen=True)
class Sampling:
    n: int = 1
    max_tokens: int = 1024
    temperature: float | None = 0.6  # None: the server's default (o-series reject the field)
    top_p: float | None = 0.95
    seed: int = 0


class EngineError(RuntimeError):
    """The engine could not produce completions (endpoint down after retries, model unusable)."""


class Engine(Protocol):
    def generate(self, conversations: Sequence[Conversation], sampling: Sampling,
                 seeds: Sequence[int] | None = None) -> list[list[Completion]]:
        """n completions per conversation, in order; seeds[i] overrides sampling.seed for i."""

    def close(self) -> None: ...


def derive_seed(base_seed: int, key: str) -> int:
    """A stable 31-bit seed for one item (e.g. a problem id), the same in every shard and run."""
    digest = hashlib.sha256(f"{base_seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def chat(system_prompt: str | None, user: str) -> Conversation:
    messages: Conversation = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": user}]


# Chains one vLLM generate call should carry: 1,024 per engine of an 8-GPU pod, several times what
# an engine runs at once (a 14B engine's KV cache holds ~190k tokens on an 80 GB GPU: ~30 chains at
# 6k tokens, ~10 at 20k), so engines stay full through the tail of long chains; a call is also the
# checkpoint, so a preempted pod redoes at most one.
CHAINS_PER_CALL = 8192
TRANSFORMERS_PROBLEMS_PER_CALL = 8  # no continuous batching there: small calls, frequent checkpoints


def problems_per_call(samples: int, backend: str) -> int:
    """Conversations to hand one `generate` call (and so one checkpoint) for k = `samples` chains each."""
    if backend == "vllm":
        return max(1, CHAINS_PER_CALL // max(1, samples))
    return TRANSFORMERS_PROBLEMS_PER_CALL


def engine_options(spec: SamplingParams | Judge, model_dir: str | Path) -> dict[str, Any]:
    """`open_engine` options from a stage's parameters (SamplingParams or a local Judge) for a
    local model: for vLLM its memory share, tensor parallel size (None: smallest that fits), KV cache
    dtype, prefix caching, seed and a context of maxTokens + a prompt budget; nothing for transformers."""
    from ..specs import SamplingParams
    from .placement import context_length

    backend = spec.engine if isinstance(spec, SamplingParams) else spec.backend
    if backend != "vllm":
        return {}
    return {"seed": spec.seed if isinstance(spec, SamplingParams) else 0,
            "max_model_len": context_length(model_dir, spec.max_tokens),
            "gpu_memory_utilization": spec.gpu_memory_utilization,
            "tensor_parallel_size": spec.tensor_parallel_size,
            "kv_cache_dtype": spec.kv_cache_dtype,
            "enable_prefix_caching": spec.enable_prefix_caching}


def open_engine(backend: str, model: str | Path | None = None, *, gpus: int = 0,
                endpoint: str | None = None, api_key: str | None = None, **options) -> Engine:
    """The engine for `backend`; `model` is a local model directory (vllm/transformers) or an
    API model name (openai). vLLM runs gpus / TP engines (TP: `tensor_parallel_size`, default the
    smallest that fits); pass `engine_options(params, model_dir)` as options."""
    if backend == "transformers":
        from .hf import TransformersEngine

        return TransformersEngine(model, **options)
    if backend == "vllm":
        from .vllm_engine import VllmEngine

        if model is None:
            raise ValueError("the vllm engine needs a model directory")
        return VllmEngine(model, gpus=max(1, gpus), **options)
    if backend == "openai":
        from .openai_api import OpenAIEngine

        if not endpoint:
            raise ValueError("the openai engine needs an endpoint (base URL)")
        return OpenAIEngine(endpoint, str(model), api_key=api_key, **options)
    raise ValueError(f"unknown engine backend {backend!r}: expected vllm, transformers or openai")
