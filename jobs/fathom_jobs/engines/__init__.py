"""Sampling engines: one interface, three backends.

- `vllm`: offline `vllm.LLM.generate` on GPUs (GPU images only; imported there and nowhere else).
- `transformers`: `model.generate` on CPU or one GPU (tests, local runs, the CPU demo).
- `openai`: any OpenAI-compatible chat-completions endpoint (judges served elsewhere).

Every engine takes chat conversations (lists of {role, content}) and returns, per conversation,
`n` `Completion` records: the text after the generation prompt, the number of generated tokens
(the end-of-sequence token included, as vLLM counts it) and `finish_reason` — `length` when the
token cap stopped the chain, `stop` otherwise. Per-conversation seeds make a conversation's
samples independent of which other conversations share its batch, so a sharded run and an
unsharded run draw the same chains.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

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


def open_engine(backend: str, model: str | Path | None = None, *, gpus: int = 0,
                endpoint: str | None = None, api_key: str | None = None, **options) -> Engine:
    """The engine for `backend`; `model` is a local model directory (vllm/transformers) or an
    API model name (openai)."""
    if backend == "transformers":
        from .hf import TransformersEngine

        return TransformersEngine(model, **options)
    if backend == "vllm":
        from .vllm_engine import VllmEngine

        return VllmEngine(model, tensor_parallel_size=max(1, gpus), **options)
    if backend == "openai":
        from .openai_api import OpenAIEngine

        if not endpoint:
            raise ValueError("the openai engine needs an endpoint (base URL)")
        return OpenAIEngine(endpoint, str(model), api_key=api_key, **options)
    raise ValueError(f"unknown engine backend {backend!r}: expected vllm, transformers or openai")
