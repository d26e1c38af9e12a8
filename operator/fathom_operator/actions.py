"""What a plan asks for: the objects to create or change, the events, the new status (plain data)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .api.status import RecipeStatus
from .store_reader import Read


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Plan:
    status: dict[str, Any]
    create: list[list[dict[str, Any]]] = field(default_factory=list)  # per attempt, in creation order
    suspend: list[tuple[str, bool]] = field(default_factory=list)  # (job, suspend?)
    delete: list[tuple[str, str]] = field(default_factory=list)  # (kind, name): Job or Service
    # (job, active?): spec.active of the Kueue Workloads the Job owns; Kueue would re-admit (and unsuspend)
    # a Job the operator suspended while its Workload stays active.
    workloads: list[tuple[str, bool]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    reads: list[Read] = field(default_factory=list)
    requeue_after: float | None = None
    warnings: list[str] = field(default_factory=list)  # for the operator's log (once each), not the user


def dump_status(status: RecipeStatus) -> dict[str, Any]:
    return status.model_dump(by_alias=True, exclude_none=True, mode="json")
