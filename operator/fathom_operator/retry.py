"""`fathom retry`: re-run a failed stage with a fresh retry budget, without editing the spec (pure).

The contract (GitOps tools keep owning the spec):
- the CLI writes the annotation `fathom.dev/retry: "<stage>@<nonce>"` (nonce: a UTC timestamp, so a
  second retry of the same stage is a new value);
- the operator acts on a value once and records it in `status.retried` (status is only ever written
  by the operator), whether it acted or refused; it never edits the annotation;
- acting: only a stage that is Failed (out of retries) is retried. Its failed attempts, and those
  of every stage downstream of it, stop counting against `retries` (`stages.<name>.retryFrom` = the
  next attempt number), so the stage starts again at once and the stages it feeds follow it as
  usual. A Succeeded or Cached stage is not re-run this way (change its spec: its fingerprint
  changes); a running or waiting one is refused with a Warning event saying why.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from . import dag
from .actions import Event

ANNOTATION_RETRY = "fathom.dev/retry"
MAX_VALUE = 300  # longer values are recorded by digest (the status is not a dumping ground)
BUSY = ("Running", "Waiting", "Suspended")


def token(value: str) -> str:
    """What `status.retried` records for an annotation value."""
    if len(value) <= MAX_VALUE:
        return value
    return "sha256:" + hashlib.sha256(value.encode(errors="replace")).hexdigest()


def pending(value: object, retried: object) -> bool:
    """Whether the annotation holds a value the operator has not acted on yet."""
    return isinstance(value, str) and bool(value) and token(value) != retried


def parse(value: str) -> tuple[str, str] | None:
    stage, sep, nonce = value.partition("@")
    return (stage, nonce) if sep and stage and nonce else None


@dataclass
class Decision:
    token: str
    reset: dict[str, int] = field(default_factory=dict)  # stage -> first attempt that counts again
    event: Event | None = None


def decide(value: object, retried: object, order: Sequence[str], deps: dict[str, list[str]],
           phase: Callable[[str], str], failed: Callable[[str], bool], running: Callable[[str], bool],
           next_attempt: Callable[[str], int]) -> Decision | None:
    """What to do about the annotation's value (None: nothing new). `phase` is the last status's
    phase of a stage, `failed` whether it is out of retries now, `running` whether a Job of it is live."""
    if not pending(value, retried):
        return None
    assert isinstance(value, str)
    decision = Decision(token(value))
    shown = value[:80]
    parsed = parse(value)
    if parsed is None:
        decision.event = Event("Warning", "RetryRefused",
                               f'{ANNOTATION_RETRY}: "{shown}" is not "<stage>@<nonce>" (use fathom retry)')
        return decision
    stage = parsed[0]
    if stage not in order:
        decision.event = Event("Warning", "RetryRefused",
                               f"{ANNOTATION_RETRY}: no stage named {stage[:63]!r}; stages: {', '.join(order)}")
        return decision
    if running(stage) or phase(stage) in BUSY:
        decision.event = Event("Warning", "RetryRefused",
                               f"{ANNOTATION_RETRY}: {stage} is {phase(stage).lower()}: it is still running "
                               "or retrying by itself; retry it once it has failed")
        return decision
    if not failed(stage) and phase(stage) == "Failed":
        decision.event = Event("Warning", "RetryRefused",
                               f"{ANNOTATION_RETRY}: {stage} failed in a way a retry does not fix (see its message)")
        return decision
    if not failed(stage):
        broken = [n for n in order if failed(n)]
        hint = f" (retry the failed stage {broken[0]})" if broken and phase(stage) in ("Skipped", "Pending") else ""
        decision.event = Event("Warning", "RetryRefused",
                               f"{ANNOTATION_RETRY}: {stage} is {phase(stage)}: only a Failed stage can be "
                               f"retried{hint}")
        return decision
    rerun = [n for n in order if n in dag.downstream(deps, {stage})]
    decision.reset = {n: next_attempt(n) for n in rerun}
    later = [n for n in rerun if n != stage]
    also = f"; downstream {', '.join(later)} will follow" if later else ""
    decision.event = Event("Normal", "RetryRequested",
                           f"{stage}: retry requested ({shown}): its failures no longer count against retries{also}")
    return decision


def counted(attempt: int, retry_from: Mapping[str, int], stage: str) -> bool:
    """Whether a failed attempt counts against the stage's retries."""
    return attempt >= retry_from.get(stage, 0)
