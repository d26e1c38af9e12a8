"""Worker processes for the symbolic path, with a hard per-item timeout.

A pathological answer (``10^{10^{10}}``, a huge factorial, deeply nested radicals) can
keep sympy busy for minutes inside a single C call that no signal interrupts. So each
item runs in a worker process, and a worker still busy ``timeout_s`` after it got the
item is killed and replaced; the item counts as not equal.

Process layout: the caller starts one clean interpreter (``python -m
fathom_jobs.grading.pool``, the "zygote") that imports and exercises sympy/math-verify
once, then forks the workers and runs the dispatch loop. Forking from the zygote makes a
replacement worker ready in milliseconds (a cold import takes ~2 s), the caller never
forks itself (safe next to vLLM/torch threads), and, unlike multiprocessing's
spawn/forkserver, the caller's ``__main__`` is never re-imported, so scripts need no
``if __name__ == "__main__"`` guard. The caller talks to the zygote over a socket: one
request per batch.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path

__all__ = ["SymbolicPool", "Outcome"]

_STARTUP_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class Outcome:
    verdict: bool
    timed_out: bool = False  # killed at the hard deadline
    soft_timeouts: int = 0  # sympy calls cut short inside the worker
    crashed: bool = False  # the worker (or the zygote) died on this item


# ------------------------------------------------------------------ inside the zygote


def _worker_main(conn: Connection, memory_limit_bytes: int | None, fast_paths: bool) -> None:
    if memory_limit_bytes:
        import resource

        # A runaway allocation becomes a MemoryError ("not equal") instead of node pressure.
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit_bytes, memory_limit_bytes))
    from fathom_jobs.grading.symbolic import evaluate_pair

    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if task is None:
            return
        index, mode, prediction, gold, budget_s = task
        try:
            verdict, soft_timeouts = evaluate_pair(mode, prediction, gold, budget_s, fast_paths)
        except MemoryError:
            verdict, soft_timeouts = False, 0
        conn.send((index, verdict, soft_timeouts))


class _Worker:
    def __init__(self, context, memory_limit_bytes: int | None, fast_paths: bool):
        self.conn, child_conn = context.Pipe(duplex=True)
        self.process = context.Process(
            target=_worker_main, args=(child_conn, memory_limit_bytes, fast_paths), daemon=True
        )
        self.process.start()
        child_conn.close()
        self.task: int | None = None
        self.started = 0.0

    def kill(self) -> None:
        self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()


class _WorkerSet:
    """The zygote's workers and its dispatch loop."""

    def __init__(
        self, size: int, timeout_s: float, soft_budget_s: float, memory_limit_bytes: int | None, fast_paths: bool
    ):
        self.size = size
        self.timeout_s = timeout_s
        self.soft_budget_s = soft_budget_s
        self.memory_limit_bytes = memory_limit_bytes
        self.fast_paths = fast_paths
        self.context = multiprocessing.get_context("fork")  # the zygote has no other threads
        self.workers: list[_Worker] = []

    def _spawn(self) -> None:
        self.workers.append(_Worker(self.context, self.memory_limit_bytes, self.fast_paths))

    def _drop(self, worker: _Worker) -> None:
        worker.kill()
        self.workers.remove(worker)

    def run(self, items: list[tuple[str, str, str]]) -> list[Outcome]:
        results: list[Outcome | None] = [None] * len(items)
        pending = deque(range(len(items)))
        while len(self.workers) < min(self.size, len(items)):
            self._spawn()
        while pending or any(w.task is not None for w in self.workers):
            for worker in self.workers:
                if worker.task is None and pending:
                    index = pending.popleft()
                    mode, prediction, gold = items[index]
                    worker.conn.send((index, mode, prediction, gold, self.soft_budget_s))
                    worker.task, worker.started = index, time.monotonic()
            busy = [w for w in self.workers if w.task is not None]
            wait_s = max(0.0, min(w.started for w in busy) + self.timeout_s - time.monotonic())
            for conn in wait([w.conn for w in busy], timeout=wait_s):
                worker = next(w for w in busy if w.conn is conn)
                try:
                    index, verdict, soft_timeouts = conn.recv()
                except (EOFError, OSError):
                    results[worker.task] = Outcome(False, crashed=True)
                    self._drop(worker)
                    self._spawn()
                    continue
                results[index] = Outcome(bool(verdict), soft_timeouts=soft_timeouts)
                worker.task = None
            now = time.monotonic()
            for worker in [w for w in self.workers if w.task is not None]:
                if now >= worker.started + self.timeout_s:
                    results[worker.task] = Outcome(False, timed_out=True)
                    self._drop(worker)
                    self._spawn()
        return [r if r is not None else Outcome(False, crashed=True) for r in results]

    def close(self) -> None:
        for worker in self.workers:
            try:
                worker.conn.send(None)
            except OSError:
                pass
        for worker in self.workers:
            worker.process.join(timeout=2)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=5)


def _serve(fd: int, size: int, timeout_s: float, soft_budget_s: float, memory_limit_bytes: int, fast_paths: bool) -> None:
    from fathom_jobs.grading.symbolic import warm_up

    conn = Connection(fd)
    try:
        warm_up()
    except Exception:  # a missing optional dependency shows up as per-item "not equal"
        pass
    workers = _WorkerSet(size, timeout_s, soft_budget_s, memory_limit_bytes or None, fast_paths)
    conn.send("ready")
    try:
        while True:
            try:
                items = conn.recv()
            except (EOFError, OSError):
                return
            if items is None:
                return
            # Plain tuples: this module is __main__ here, so its classes would not unpickle.
            conn.send([(o.verdict, o.timed_out, o.soft_timeouts, o.crashed) for o in workers.run(items)])
    finally:
        workers.close()


# ------------------------------------------------------------------ in the caller


class SymbolicPool:
    """``workers`` processes evaluating ``(mode, prediction, gold)`` items of canonical
    answers. Not thread-safe: one ``run`` at a time (``Grader`` serialises calls).

    timeout_s: the hard limit per item (the worker is killed).
    soft_budget_s: the in-worker deadline for sympy calls, by default just inside the
        hard one so a signal-interruptible computation ends without losing the worker.
    """

    def __init__(
        self,
        workers: int | None = None,
        timeout_s: float = 5.0,
        memory_limit_mb: int | None = 3072,
        fast_paths: bool = True,
        soft_budget_s: float | None = None,
    ):
        self.size = max(1, workers or min(os.cpu_count() or 1, 8))
        self.timeout_s = timeout_s
        self.soft_budget_s = soft_budget_s if soft_budget_s is not None else 0.9 * timeout_s
        self.memory_limit_bytes = memory_limit_mb * 2**20 if memory_limit_mb else 0
        self.fast_paths = fast_paths
        self._zygote: subprocess.Popen | None = None
        self._conn: Connection | None = None

    def _start(self) -> None:
        ours, theirs = socket.socketpair()
        package_root = str(Path(__file__).resolve().parents[2])  # the folder holding fathom_jobs/
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        command = [
            sys.executable, "-m", "fathom_jobs.grading.pool", str(theirs.fileno()), str(self.size),
            repr(self.timeout_s), repr(self.soft_budget_s), str(self.memory_limit_bytes),
            "1" if self.fast_paths else "0",
        ]  # fmt: skip
        self._zygote = subprocess.Popen(command, pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL)
        theirs.close()
        self._conn = Connection(ours.detach())
        if not self._conn.poll(_STARTUP_TIMEOUT_S) or self._conn.recv() != "ready":
            self.close()
            raise RuntimeError(f"grading worker pool did not start within {_STARTUP_TIMEOUT_S:.0f} s")

    def run(self, items: list[tuple[str, str, str]]) -> list[Outcome]:
        """Outcomes for ``(mode, prediction, gold)`` items, in order."""
        if not items:
            return []
        if self._zygote is None or self._zygote.poll() is not None:
            self._start()
        # Each item takes at most timeout_s (plus a kill and a fork); the slack covers that.
        limit_s = (len(items) // self.size + 1) * (self.timeout_s + 1.0) + 30.0
        try:
            self._conn.send(items)
            if self._conn.poll(limit_s):
                return [Outcome(*fields) for fields in self._conn.recv()]
        except (EOFError, OSError):
            pass
        self.close()  # the zygote died or hung: restart it for the next batch
        return [Outcome(False, crashed=True) for _ in items]

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.send(None)
            except OSError:
                pass
            self._conn.close()
            self._conn = None
        if self._zygote is not None:
            try:
                self._zygote.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._zygote.kill()
                self._zygote.wait(timeout=5)
            self._zygote = None


if __name__ == "__main__":
    _fd, _size, _timeout, _soft, _memory, _fast = sys.argv[1:7]
    _serve(int(_fd), int(_size), float(_timeout), float(_soft), int(_memory), _fast == "1")
