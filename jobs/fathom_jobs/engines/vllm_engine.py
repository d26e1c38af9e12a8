"""vLLM offline inference (GPU images). `vllm` is imported here and nowhere else.

A pod's GPUs run `GPUs / TP` independent engines (data parallel), each a `vllm.LLM` over TP GPUs,
with TP from `placement.plan` (the smallest that fits the weights and the KV cache of the
context) unless `tensorParallelSize` says otherwise. Why separate engines in separate processes
rather than vLLM's own `LLM(data_parallel_size=N)`: vLLM refuses that in a single process ("is
not supported for single-process usage and may hang", since vLLM PR #27282), and its offline
data parallel mode (VLLM_DP_RANK/VLLM_DP_SIZE per launched process) is for MoE models only
("Offline data parallel mode is not supported/useful for dense models", vllm/config/parallel.py).
A dense model's replicas need no communication, so each engine is a plain `LLM` in its own
spawned process whose CUDA_VISIBLE_DEVICES holds its TP GPUs; with one engine it runs in this
process. Nothing changes for the caller: `generate` hands every engine its share of the
conversations in ONE `LLM.generate` call (vLLM's continuous batching keeps it full until the
last chain ends) and returns the completions in order.

Sampling is split into requests of at most SAMPLES_PER_REQUEST chains: request j of a
conversation seeded s asks for chains j*8 .. j*8+7 with seed s + j*8. vLLM fans a request with n > 1
into n children seeded seed + i (vllm/v1/engine/parallel_sampling.py, ParentRequest), so the
chains are the same however a conversation's samples are split, and a conversation's 64 samples
can spread over 8 engines when a shard holds fewer problems than the pod has engines.
"""

from __future__ import annotations

import gc
import json
import logging
import multiprocessing
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from . import Completion, Conversation, EngineError, Sampling
from .placement import Placement, plan_for_model, visible_devices

log = logging.getLogger("fathom_jobs.engines")
SAMPLES_PER_REQUEST = 8
READY_TIMEOUT_S = 3600.0  # loading a large checkpoint from a slow disk and compiling CUDA graphs
CLOSE_TIMEOUT_S = 120.0

Prompt = dict[str, list[int]]
Record = tuple[str, int, str]  # text, generated tokens, finish reason


def release_gpu_memory() -> None:
    """Destroy vLLM's model-parallel groups and distributed environment, collect, empty the CUDA cache.

    vLLM 0.31: `vllm.distributed.parallel_state.destroy_model_parallel()` (the TP/PP/DP groups) and
    `destroy_distributed_environment()` (the world group and torch.distributed's process group);
    its own `cleanup_dist_env_and_memory` does the same plus the gc and empty_cache below. Call it
    after dropping the last reference to the `LLM`."""
    try:
        from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel
    except ImportError:
        pass
    else:
        destroy_model_parallel()
        destroy_distributed_environment()
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


class Replica(Protocol):
    devices: list[str]

    def submit(self, prompts: list[Prompt], params: list[dict[str, Any]]) -> None: ...

    def result(self) -> list[list[Record]]: ...

    def close(self) -> None: ...


class LocalReplica:
    """One `vllm.LLM` in this process (on the first TP visible GPUs)."""

    def __init__(self, devices: list[str], llm_options: dict[str, Any]) -> None:
        from vllm import LLM

        self.devices = devices
        self.llm: Any = LLM(**llm_options)
        self._pending: list[list[Record]] | None = None

    def generate(self, prompts: list[Prompt], params: list[dict[str, Any]]) -> list[list[Record]]:
        from vllm import SamplingParams

        outputs = self.llm.generate(prompts, [SamplingParams(**p) for p in params], use_tqdm=False)
        return [[(o.text, len(o.token_ids), "length" if o.finish_reason == "length" else "stop")
                 for o in request.outputs] for request in outputs]

    def submit(self, prompts: list[Prompt], params: list[dict[str, Any]]) -> None:
        self._pending = self.generate(prompts, params)

    def result(self) -> list[list[Record]]:
        pending, self._pending = self._pending, None
        if pending is None:
            raise EngineError("no generate call is pending on this engine")
        return pending

    def close(self) -> None:
        llm, self.llm = self.llm, None
        if llm is None:
            return
        # The engine core (its own process in vLLM V1) holds the weights and the KV cache.
        shutdown = getattr(getattr(getattr(llm, "llm_engine", None), "engine_core", None), "shutdown", None)
        if callable(shutdown):
            shutdown()
        del llm
        release_gpu_memory()


def _replica_main(conn: Any, devices: list[str], llm_options: dict[str, Any]) -> None:
    """A spawned engine process: load, then answer generate requests until told to close."""
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
    try:
        replica = LocalReplica(devices, llm_options)
    except BaseException as exc:  # report why before dying: the parent shows it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", None))
    while True:
        try:
            kind, payload = conn.recv()
        except EOFError:  # the parent is gone
            break
        if kind == "close":
            replica.close()
            conn.send(("closed", None))
            break
        try:
            conn.send(("done", replica.generate(*payload)))
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"))
    conn.close()


class ProcessReplica:
    """One `vllm.LLM` in a spawned process that sees only `devices`."""

    def __init__(self, devices: list[str], llm_options: dict[str, Any]) -> None:
        context = multiprocessing.get_context("spawn")  # never fork a process that may hold CUDA state
        self.devices = devices
        self.conn, child = context.Pipe()
        # Set while the process starts, so CUDA_VISIBLE_DEVICES holds before anything imports torch.
        saved = os.environ.get("CUDA_VISIBLE_DEVICES")
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
        try:
            # Not a daemon: vLLM starts its own engine-core and worker processes from it.
            self.process = context.Process(target=_replica_main, args=(child, devices, llm_options),
                                           name=f"vllm-gpus-{'-'.join(devices)}")
            self.process.start()
        finally:
            if saved is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = saved
        child.close()

    def _receive(self, expected: str, timeout: float | None = None) -> Any:
        if timeout is not None and not self.conn.poll(timeout):
            raise EngineError(f"vLLM engine on GPUs {','.join(self.devices)}: no answer in {timeout:.0f} s")
        try:
            kind, payload = self.conn.recv()
        except EOFError:
            self.process.join(5)
            raise EngineError(f"vLLM engine on GPUs {','.join(self.devices)} exited "
                              f"(exit code {self.process.exitcode})") from None
        if kind == "error":
            raise EngineError(f"vLLM engine on GPUs {','.join(self.devices)}: {payload}")
        if kind != expected:
            raise EngineError(f"vLLM engine on GPUs {','.join(self.devices)}: expected {expected}, got {kind}")
        return payload

    def wait_ready(self) -> None:
        self._receive("ready", READY_TIMEOUT_S)

    def submit(self, prompts: list[Prompt], params: list[dict[str, Any]]) -> None:
        self.conn.send(("generate", (prompts, params)))

    def result(self) -> list[list[Record]]:
        return self._receive("done")

    def close(self) -> None:
        if self.process.is_alive():
            try:
                self.conn.send(("close", None))
                self._receive("closed", CLOSE_TIMEOUT_S)
            except (EngineError, OSError) as exc:
                log.warning("%s", exc)
        self.process.join(CLOSE_TIMEOUT_S)
        if self.process.is_alive():  # a wedged engine: its GPU memory goes with the process
            self.process.terminate()
            self.process.join(30)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()
        self.conn.close()


class VllmEngine:
    # How an engine is started on a group of GPUs when the pod runs several (tests swap it).
    spawn_replica: Callable[[list[str], dict[str, Any]], Replica] = ProcessReplica

    def __init__(self, model_dir: str | Path, *, gpus: int = 1, tensor_parallel_size: int | None = None,
                 seed: int = 0, max_model_len: int | None = None, gpu_memory_utilization: float = 0.9,
                 kv_cache_dtype: str = "auto", enable_prefix_caching: bool = True, dtype: str = "auto") -> None:
        from transformers import AutoTokenizer

        self.placement: Placement = plan_for_model(
            model_dir, gpus=gpus, context=max_model_len, utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size, kv_cache_dtype=kv_cache_dtype)
        tp, dp = self.placement.tensor_parallel_size, self.placement.data_parallel_size
        self.llm_options: dict[str, Any] = dict(
            model=str(model_dir), tensor_parallel_size=tp, seed=seed, dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization, kv_cache_dtype=kv_cache_dtype,
            enable_prefix_caching=enable_prefix_caching)
        if max_model_len:
            self.llm_options["max_model_len"] = max_model_len
        # The same Hugging Face tokenizer vLLM loads: prompts are templated and tokenized here once.
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        devices = visible_devices(max(1, gpus))
        if len(devices) < tp * dp:
            devices = [str(i) for i in range(tp * dp)]
        groups = self.placement.device_groups(devices)
        self.replicas: list[Replica] = []
        try:
            if dp == 1:
                self.replicas.append(LocalReplica(groups[0], self.llm_options))
            else:
                spawn = type(self).spawn_replica
                self.replicas = [spawn(group, self.llm_options) for group in groups]  # all load at once
                for replica in self.replicas:
                    wait = getattr(replica, "wait_ready", None)
                    if callable(wait):
                        wait()
        except BaseException:
            self.close()
            raise

    def prompt(self, conversation: Conversation) -> Prompt:
        # Token ids, not text: vLLM would otherwise add a second BOS to the templated prompt.
        text = self.tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        return {"prompt_token_ids": self.tokenizer(text, add_special_tokens=False)["input_ids"]}

    @staticmethod
    def sampling_params(sampling: Sampling, n: int, seed: int) -> dict[str, Any]:
        options: dict[str, Any] = dict(n=n, max_tokens=sampling.max_tokens, seed=seed)
        if sampling.temperature is not None:
            options["temperature"] = sampling.temperature
        if sampling.top_p is not None:
            options["top_p"] = sampling.top_p
        return options

    def generate(self, conversations: Sequence[Conversation], sampling: Sampling,
                 seeds: Sequence[int] | None = None) -> list[list[Completion]]:
        """n completions per conversation, in order. Every conversation goes to the engines in this
        one call: engine e gets requests e, e + E, e + 2E, ... (E engines), all in one LLM.generate."""
        if not conversations:
            return []
        if not self.replicas:
            raise EngineError("the vLLM engine is closed")
        # A seed per request makes each conversation's chains independent of the batch around it.
        seeds = list(seeds) if seeds is not None else [sampling.seed + i for i in range(len(conversations))]
        # Templated and tokenized once per distinct conversation (a caller may repeat one per chain).
        cache: dict[str, Prompt] = {}
        prompts = []
        for conversation in conversations:
            key = json.dumps(conversation, sort_keys=True)
            if key not in cache:
                cache[key] = self.prompt(conversation)
            prompts.append(cache[key])
        requests = [(i, first, min(SAMPLES_PER_REQUEST, sampling.n - first))
                    for i in range(len(conversations)) for first in range(0, sampling.n, SAMPLES_PER_REQUEST)]
        shares = [requests[e::len(self.replicas)] for e in range(len(self.replicas))]
        busy = [(replica, share) for replica, share in zip(self.replicas, shares, strict=True) if share]
        parts: dict[tuple[int, int], list[Completion]] = {}
        try:
            for replica, share in busy:
                replica.submit([prompts[i] for i, _, _ in share],
                               [self.sampling_params(sampling, n, seeds[i] + first) for i, first, n in share])
            for replica, share in busy:
                for (i, first, _), records in zip(share, replica.result(), strict=True):
                    parts[(i, first)] = [Completion(text=t, tokens=n,
                                                    finish_reason="length" if r == "length" else "stop")
                                         for t, n, r in records]
        except BaseException:
            self.close()  # the other engines' answers are still in flight: this engine cannot be reused
            raise
        chains: list[list[Completion]] = [[] for _ in conversations]
        for i, first, _ in requests:
            chains[i] += parts[(i, first)]
        return chains

    def close(self) -> None:
        """Free every engine's GPU memory (the next model of an eval pod loads after this returns)."""
        replicas, self.replicas = self.replicas, []
        for replica in replicas:
            try:
                replica.close()
            except Exception as exc:  # close the others anyway
                log.warning("closing the vLLM engine on GPUs %s: %s", ",".join(replica.devices), exc)
