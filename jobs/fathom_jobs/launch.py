"""Running a training stage on every GPU it was given: torchrun re-execution and rendezvous variables.

One pod runs `python -m fathom_jobs <type>`. When the stage has more than one GPU in all
(nodes x gpusPerNode), `relaunch_distributed` re-executes the same command under torchrun, one
worker per GPU, with the world the operator describes in the environment (NNODES,
NPROC_PER_NODE, MASTER_ADDR, MASTER_PORT, NODE_RANK on multi-node stages; a single-node stage
only has JobSpec.gpus_per_node). The workers find LOCAL_RANK set and train in-process. A worker
that meets bad input leaves its one-line message in a file, so the pod still exits 2 with it.
SIGTERM reaches only the launcher (PID 1): it passes it on to torchrun, which passes it on to the
workers, and waits for their checkpoint (fathom_jobs.preemption).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from .errors import StageInputError
from .inputs import cache_root
from .preemption import Terminated
from .specs import JobSpec

log = logging.getLogger("fathom_jobs.launch")

# The worker processes report a bad-input message here, so the launcher can exit 2 with it.
INPUT_ERROR_ENV = "FATHOM_INPUT_ERROR_FILE"
DEFAULT_MASTER_PORT = 29500
SHUTDOWN_TIMEOUT_ENV = "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"  # torchrun: SIGTERM to SIGKILL for its workers
SHUTDOWN_TIMEOUT_S = 24 * 3600


@dataclass(frozen=True)
class ProcessLayout:
    nnodes: int
    nproc_per_node: int
    node_rank: int
    master_addr: str
    master_port: int

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node


def process_layout(job: JobSpec, env: Mapping[str, str]) -> ProcessLayout:
    """The world the operator set up: its environment variables first, the job spec second."""
    return ProcessLayout(
        nnodes=int(env.get("NNODES") or job.nodes),
        nproc_per_node=max(1, int(env.get("NPROC_PER_NODE") or job.gpus_per_node or 1)),
        node_rank=int(env.get("NODE_RANK") or env.get("JOB_COMPLETION_INDEX") or 0),
        master_addr=env.get("MASTER_ADDR") or "127.0.0.1",
        master_port=int(env.get("MASTER_PORT") or DEFAULT_MASTER_PORT),
    )


def under_launcher(env: Mapping[str, str]) -> bool:
    """torchrun (or a test) already set up this process's rank."""
    return "LOCAL_RANK" in env and "WORLD_SIZE" in env


def launch_command(job: JobSpec, env: Mapping[str, str], python: str = sys.executable) -> list[str] | None:
    """The torchrun command that runs this stage on every GPU, or None to train in this process."""
    if under_launcher(env):
        return None
    layout = process_layout(job, env)
    if layout.world_size <= 1:
        return None
    command = [python, "-m", "torch.distributed.run", f"--nproc_per_node={layout.nproc_per_node}"]
    if layout.nnodes == 1:
        command.append("--standalone")
    else:
        command += [f"--nnodes={layout.nnodes}", f"--node_rank={layout.node_rank}",
                    f"--master_addr={layout.master_addr}", f"--master_port={layout.master_port}"]
    # A failed worker fails the pod; the Job's retry (with resume) is the restart policy.
    command += ["--max_restarts=0", "-m", "fathom_jobs", job.type]
    return command


def relaunch_distributed(job: JobSpec) -> bool:
    """Run the stage under torchrun when it spans several GPUs; False means: train here."""
    command = launch_command(job, os.environ)
    if command is None:
        return False
    import torch

    layout = process_layout(job, os.environ)
    if torch.cuda.device_count() < layout.nproc_per_node:
        raise StageInputError(f"the stage asks for {layout.nproc_per_node} GPUs per node, "
                              f"this node has {torch.cuda.device_count()}")
    error_file = cache_root() / f"input-error-{os.getpid()}.txt"
    error_file.unlink(missing_ok=True)
    env = {**os.environ, "FATHOM_JOB_SPEC": job.model_dump_json(by_alias=True), INPUT_ERROR_ENV: str(error_file)}
    # torchrun SIGKILLs its workers 30 s after passing SIGTERM on by default, too soon for a big
    # checkpoint; the pod's terminationGracePeriodSeconds is the real bound.
    env.setdefault(SHUTDOWN_TIMEOUT_ENV, str(SHUTDOWN_TIMEOUT_S))
    log.info("launching %s", " ".join(command))
    code, terminated = call_forwarding_sigterm(command, env)
    if code != 0:
        if error_file.exists() and error_file.read_text().strip():
            raise StageInputError(error_file.read_text().strip().splitlines()[0])
        if terminated:
            raise Terminated("stopped by SIGTERM (passed on to the workers, which checkpoint when training)")
        raise SystemExit(code)  # the workers' tracebacks are already in the log
    return True


def call_forwarding_sigterm(command: list[str], env: Mapping[str, str]) -> tuple[int, bool]:
    """Run `command` to its end, passing a SIGTERM this process gets on to it: (exit code, whether
    one came). Only PID 1 of the container hears Kubernetes' SIGTERM; torchrun passes it to its
    workers, which save a checkpoint (fathom_jobs.preemption) while this process waits for them."""
    process = subprocess.Popen(command, env=dict(env))
    terminated = False

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal terminated
        terminated = True
        process.send_signal(signal.SIGTERM)

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, forward) if in_main else None
    try:
        return process.wait(), terminated
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


def report_input_error(exc: StageInputError) -> None:
    """In a torchrun worker: leave the message for the launcher (it exits 2 with it)."""
    path = os.environ.get(INPUT_ERROR_ENV)
    if path:
        Path(path).write_text(str(exc))


def ensure_process_group_env() -> None:
    """DeepSpeed needs a process group even for one process: set what torchrun would set."""
    if under_launcher(os.environ):
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0",
                       "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
