"""SIGTERM in a training stage: a checkpoint committed to the store at the step's end, exit 143, and
the next attempt resumes from it — on the tiny model, in-process and through the CLI."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from fathom_jobs.datasets import CHAINS, write_dataset
from fathom_jobs.inputs import store_for
from fathom_jobs.joblog import log_uri, read_log
from fathom_jobs.preemption import EXIT_TERMINATED, Preempted, Terminated, agreed, install_exit_on_sigterm
from fathom_jobs.specs import SEED_SYSTEM_PROMPT
from fathom_jobs.stages import sft
from fathom_jobs.store import latest_checkpoint
from tests.support.jobs_helpers import file_uri, make_job


def chain(i: int) -> dict:
    return {"id": f"c{i}", "answer": str(2 * i), "difficulty": i, "solve_rate": 0.5, "position": i,
            "prompt": [{"role": "system", "content": SEED_SYSTEM_PROMPT}, {"role": "user", "content": f"What is {i}+{i}?"}],
            "completion": [{"role": "assistant", "content": f"<think>\n{i} and {i} make {2 * i}.\n</think>\n\n"
                                                            f"The final answer is $\\boxed{{{2 * i}}}$."}]}


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FATHOM_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def sigterm_restored():
    """Whatever a test does with SIGTERM, pytest gets its own handler back."""
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


def sft_job(tmp_path, model_dir, **params):
    data = file_uri(tmp_path / "store" / "chains")
    write_dataset(store_for(data), [chain(i) for i in range(8)], CHAINS, fingerprint="chains")
    defaults = {"model": file_uri(model_dir), "data": data, "maxLength": 64, "maxSteps": 6, "saveSteps": 100,
                "deepspeed": "none", "gradientAccumulationSteps": 1, "learningRate": 1e-3, "reportTo": "none"}
    return make_job("sft", {**defaults, **params}, file_uri(tmp_path / "store" / "sft"))


BUILD_TRAINER = sft.build_trainer


def with_callback(monkeypatch, callback, record=None):
    """sft.build_trainer, plus `callback` (after the stage's own) and the step each batch started at."""
    def build(*args, **kwargs):
        trainer = BUILD_TRAINER(*args, **kwargs)
        if callback is not None:
            trainer.add_callback(callback)
        if record is not None:
            step = trainer.training_step

            def training_step(*inner, **more):
                record.append(trainer.state.global_step)
                return step(*inner, **more)

            trainer.training_step = training_step
        return trainer

    monkeypatch.setattr(sft, "build_trainer", build)


def sigterm_after(step: int):
    from transformers import TrainerCallback

    class SigtermAfter(TrainerCallback):
        """What the kubelet does, from inside: SIGTERM to this process once `step` is done."""

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step:
                assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)  # never kill pytest
                os.kill(os.getpid(), signal.SIGTERM)
            return control

    return SigtermAfter()


def test_sigterm_commits_a_checkpoint_and_the_next_attempt_resumes_from_it(tmp_path, tiny_model_dir, monkeypatch,
                                                                             sigterm_restored):
    before = signal.getsignal(signal.SIGTERM)
    job = sft_job(tmp_path, tiny_model_dir)  # saveSteps 100: no periodic checkpoint to fall back on
    with_callback(monkeypatch, sigterm_after(2))
    with pytest.raises(Preempted) as stopped:
        sft.run(job)
    assert stopped.value.code == EXIT_TERMINATED
    store = store_for(job.output)
    # The signal came after step 2's check: step 3 is saved (nothing trained is lost).
    step, uri = latest_checkpoint(store)
    assert step == 3 and uri.endswith("/checkpoints/step-3")
    assert store.read_manifest() is None  # the stage's output is not committed: it is not trained yet
    assert store.read_manifest("checkpoints/step-3").extra["fingerprint"]
    assert not list((tmp_path / "cache" / "train").rglob("checkpoint-3"))  # local copy gone once committed

    steps: list[int] = []
    with_callback(monkeypatch, None, record=steps)
    sft.run(job.model_copy(update={"attempt": 1, "resume_from": uri}))  # the operator's retry
    assert steps == [3, 4, 5]
    metrics = store.read_json("metrics.json")
    assert metrics["resumedFromStep"] == 3 and metrics["steps"] == 6
    assert signal.getsignal(signal.SIGTERM) == before  # the stage put the handler back
    assert store.read_manifest() is not None


def test_sigterm_at_the_last_step_still_commits_a_checkpoint(tmp_path, tiny_model_dir, monkeypatch,
                                                             sigterm_restored):
    from transformers import TrainerCallback

    class SigtermDuringLastStep(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 2:  # the third and last step is running
                os.kill(os.getpid(), signal.SIGTERM)
            return control

    job = sft_job(tmp_path, tiny_model_dir, maxSteps=3)
    with_callback(monkeypatch, SigtermDuringLastStep())
    with pytest.raises(Preempted):
        sft.run(job)
    store = store_for(job.output)
    assert latest_checkpoint(store)[0] == 3  # StoreCheckpoints' last-step skip is overridden
    with_callback(monkeypatch, None)
    sft.run(job.model_copy(update={"attempt": 1}))  # nothing left to train: the final model only
    assert store.read_json("metrics.json")["resumedFromStep"] == 3 and store.read_manifest() is not None


def test_grpo_stops_the_same_way(tmp_path, tiny_model_dir, monkeypatch, sigterm_restored):
    from fathom_jobs.datasets import PROMPTS
    from fathom_jobs.stages import grpo

    data = file_uri(tmp_path / "store" / "rl-set")
    write_dataset(store_for(data), [{"id": f"p{i}", "prompt": chain(i)["prompt"], "answer": str(2 * i), "difficulty": 3,
                                     "solve_rate": 0.25} for i in range(4)], PROMPTS, fingerprint="rl")
    job = make_job("grpo", {"model": file_uri(tiny_model_dir), "data": data, "maxCompletionTokens": 8,
                            "numGenerations": 4, "perDeviceBatchSize": 4, "gradientAccumulationSteps": 1,
                            "maxSteps": 4, "useVllm": False, "deepspeed": "none", "saveSteps": 100,
                            "reportTo": "none"}, file_uri(tmp_path / "store" / "grpo"))
    build = grpo.build_trainer

    def build_with_sigterm(*args, **kwargs):
        trainer = build(*args, **kwargs)
        trainer.add_callback(sigterm_after(1))
        return trainer

    monkeypatch.setattr(grpo, "build_trainer", build_with_sigterm)
    with pytest.raises(Preempted):
        grpo.run(job)
    store = store_for(job.output)
    assert latest_checkpoint(store)[0] == 2 and store.read_manifest() is None


def test_sigterm_outside_training_exits_at_once(sigterm_restored):
    install_exit_on_sigterm()
    with pytest.raises(Terminated) as raised:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
    assert raised.value.code == 143


def test_the_launcher_passes_sigterm_on_and_waits(tmp_path, sigterm_restored):
    """PID 1 (the launcher) hears SIGTERM; torchrun, its child, must too, and finish its save."""
    import threading

    from fathom_jobs.launch import call_forwarding_sigterm

    ready = tmp_path / "ready"
    child = ("import pathlib, signal, sys, time\n"
             "def stop(*_):\n    time.sleep(0.5)\n    sys.exit(43)  # a checkpoint takes a while\n"
             f"signal.signal(signal.SIGTERM, stop)\npathlib.Path({str(ready)!r}).touch()\ntime.sleep(60)\n")

    def kubelet() -> None:
        while not ready.exists():
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    threading.Thread(target=kubelet, daemon=True).start()
    assert call_forwarding_sigterm([sys.executable, "-c", child], os.environ) == (43, True)
    assert signal.getsignal(signal.SIGTERM) == before


def _rank(rank: int, port: int, flags: list[bool], out) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=len(flags))
    out.put((rank, agreed(flags[rank], "cpu"), agreed(False, "cpu")))
    dist.destroy_process_group()


def test_one_rank_seeing_sigterm_stops_every_rank():
    import multiprocessing

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    flags = [False, True, False]  # only the middle "node" was preempted
    processes = [context.Process(target=_rank, args=(rank, port, flags, out)) for rank in range(len(flags))]
    for process in processes:
        process.start()
    results = sorted(out.get(timeout=60) for _ in flags)
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    assert results == [(0, True, False), (1, True, False), (2, True, False)]


@pytest.mark.slow
def test_sigterm_through_the_cli_commits_a_checkpoint_and_the_log(tmp_path, tiny_model_dir):
    """As in a pod: `python -m fathom_jobs sft`, SIGTERM once training runs; exit 143 with the
    checkpoint committed and the pod's log in the store. Prints how long SIGTERM -> exit took."""
    job = sft_job(tmp_path, tiny_model_dir, maxSteps=10_000)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(job.model_dump(by_alias=True, mode="json")))
    env = {**os.environ, "FATHOM_CACHE_DIR": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "fathom_jobs", "sft", "--spec", str(spec)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    losses = 0
    assert process.stdout is not None
    for line in process.stdout:  # the Trainer prints every step's loss (logging_steps 1)
        losses += "'loss'" in line
        if losses == 3:
            break
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    took = time.monotonic() - sent
    assert process.returncode == EXIT_TERMINATED, stderr[-3000:]
    assert "stopped by SIGTERM at step" in stderr.strip().splitlines()[-1]
    store = store_for(job.output)
    step, _ = latest_checkpoint(store)
    assert step >= 3 and store.read_manifest() is None
    log = read_log(store_for, job.output, 0, 0)
    assert log is not None and "'loss'" in log and f"stopped by SIGTERM at step {step}" in log
    assert log_uri(job.output, 0, 0) == f"{job.output}/_logs/attempt-0/pod-0.log"
    print(f"SIGTERM -> checkpoint step-{step} committed, log uploaded, exit 143: {took:.2f} s")


@pytest.mark.slow
def test_torchrun_workers_stop_together_when_one_gets_sigterm(tmp_path, tiny_model_dir):
    """Two CPU workers (gloo) under torchrun, as `launch` runs them; SIGTERM to one of them only (one
    node's pod taken away): both stop at the same step and that checkpoint is committed."""
    job = sft_job(tmp_path, tiny_model_dir, maxSteps=10_000)
    env = {**os.environ, "FATHOM_CACHE_DIR": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
           "FATHOM_JOB_SPEC": job.model_dump_json(by_alias=True), "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "120"}
    process = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
                                "--max_restarts=0", "-m", "fathom_jobs", "sft"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert process.stdout is not None
    losses = 0
    for line in process.stdout:
        losses += "'loss'" in line
        if losses == 2:
            break
    import psutil  # accelerate's dependency

    workers = sorted(child.pid for child in psutil.Process(process.pid).children())
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGTERM)
    output, _ = process.communicate(timeout=240)
    stops = [line for line in output.splitlines() if "stopped by SIGTERM at step" in line]
    assert len(stops) == 2 and stops[0] == stops[1], output[-3000:]  # both ranks, the same step
    step = int(stops[0].split("at step ")[1].split()[0])
    store = store_for(job.output)
    assert latest_checkpoint(store)[0] == step and store.read_manifest() is None
