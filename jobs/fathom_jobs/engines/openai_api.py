"""An OpenAI-compatible chat-completions client: bounded concurrency, a request-rate limit, and
retries with exponential backoff on 429, 5xx, timeouts and dropped connections."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Sequence

from . import Completion, Conversation, EngineError, Sampling

log = logging.getLogger("fathom_jobs.engines")
RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}


class EngineConfigError(EngineError):
    """The endpoint refused the key (401/403) or does not know the URL/model (404)."""


class _RateLimiter:
    """Spaces request starts at least 60/rpm seconds apart (no bursts above the rate)."""

    def __init__(self, requests_per_minute: int | None) -> None:
        self.interval = 60.0 / requests_per_minute if requests_per_minute else 0.0
        self.next_start = 0.0
        self.lock = asyncio.Lock()

    async def wait(self) -> None:
        if not self.interval:
            return
        async with self.lock:
            now = time.monotonic()
            delay = self.next_start - now
            self.next_start = max(now, self.next_start) + self.interval
        if delay > 0:
            await asyncio.sleep(delay)


class OpenAIEngine:
    def __init__(self, endpoint: str, model: str, *, api_key: str | None = None, max_concurrency: int = 16,
                 requests_per_minute: int | None = None, timeout_s: float = 300.0, max_attempts: int = 6,
                 backoff_base_s: float = 1.0, backoff_cap_s: float = 30.0) -> None:
        self.url = endpoint.rstrip("/") + "/chat/completions"
        self.model = model
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.max_concurrency = max_concurrency
        self.requests_per_minute = requests_per_minute
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.stats = {"requests": 0, "retries": 0, "failed": 0}

    def generate(self, conversations: Sequence[Conversation], sampling: Sampling,
                 seeds: Sequence[int] | None = None) -> list[list[Completion]]:
        seeds = list(seeds) if seeds is not None else [sampling.seed + i for i in range(len(conversations))]
        return asyncio.run(self._generate_all(list(conversations), sampling, seeds))

    async def _generate_all(self, conversations: list[Conversation], sampling: Sampling,
                            seeds: list[int]) -> list[list[Completion]]:
        import httpx

        limiter = _RateLimiter(self.requests_per_minute)
        slots = asyncio.Semaphore(self.max_concurrency)
        async with httpx.AsyncClient(timeout=self.timeout_s, headers=self.headers) as client:
            async def one(conversation: Conversation, seed: int) -> Completion:
                async with slots:
                    return await self._request(client, limiter, conversation, sampling, seed)

            # n samples are n requests (seed + j): exact token counts per chain, any server.
            tasks = [[asyncio.ensure_future(one(c, seed + j)) for j in range(sampling.n)]
                     for c, seed in zip(conversations, seeds, strict=True)]
            try:
                return [[await task for task in row] for row in tasks]
            finally:
                for row in tasks:
                    for task in row:
                        task.cancel()

    def _body(self, conversation: Conversation, sampling: Sampling, seed: int) -> dict:
        # max_completion_tokens: OpenAI's reasoning models refuse max_tokens; vLLM takes both.
        body = {"model": self.model, "messages": conversation, "max_completion_tokens": sampling.max_tokens,
                "seed": seed}
        if sampling.temperature is not None:
            body["temperature"] = sampling.temperature
        if sampling.top_p is not None and sampling.temperature is not None:
            body["top_p"] = sampling.top_p
        return body

    async def _request(self, client, limiter: _RateLimiter, conversation: Conversation, sampling: Sampling,
                       seed: int) -> Completion:
        import httpx

        body = self._body(conversation, sampling, seed)
        for attempt in range(1, self.max_attempts + 1):
            await limiter.wait()
            self.stats["requests"] += 1
            retry_after = None
            try:
                response = await client.post(self.url, json=body)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                why = f"{type(exc).__name__}"
            else:
                status = response.status_code
                if status == 200:
                    parsed = _parse(response)
                    if parsed is not None:
                        return parsed
                    why = "a 200 reply without a chat completion in it"
                elif status in (401, 403, 404):
                    raise EngineConfigError(f"{self.url} answered {status} for model {self.model!r}: "
                                            f"{_error_text(response)}")
                elif status in RETRYABLE_STATUS or status >= 500:
                    why = f"HTTP {status}"
                    retry_after = _retry_after(response)
                else:
                    # The request itself is unacceptable (400, 413, 422): retrying cannot help.
                    self.stats["failed"] += 1
                    return Completion(text="", tokens=0, finish_reason="stop",
                                      error=f"HTTP {status}: {_error_text(response)}")
            if attempt == self.max_attempts:
                break
            delay = min(self.backoff_cap_s, self.backoff_base_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            if retry_after is not None:
                delay = min(max(delay, retry_after), 60.0)
            self.stats["retries"] += 1
            log.warning("%s: %s; retrying in %.1fs (attempt %d of %d)", self.url, why, delay, attempt,
                        self.max_attempts)
            await asyncio.sleep(delay)
        raise EngineError(f"{self.url}: {why} after {self.max_attempts} attempts")

    def close(self) -> None:
        pass


def _parse(response) -> Completion | None:
    try:
        doc = response.json()
        choice = doc["choices"][0]
        text = choice["message"].get("content") or ""
    except (json.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError, ValueError):
        return None
    tokens = ((doc.get("usage") or {}).get("completion_tokens")) or 0
    reason = "length" if choice.get("finish_reason") == "length" else "stop"
    return Completion(text=text, tokens=int(tokens), finish_reason=reason)


def _retry_after(response) -> float | None:
    try:
        return float(response.headers.get("retry-after", ""))
    except ValueError:
        return None


def _error_text(response) -> str:
    """The server's error message (OpenAI puts it in error.message), first line, shortened."""
    try:
        message = response.json().get("error", {}).get("message")
    except (ValueError, AttributeError):
        message = None
    text = (message or response.text or "").strip()
    return text.splitlines()[0][:200] if text else "no body"
