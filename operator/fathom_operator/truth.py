"""Recipe conditions the roll-up leaves out (pure): what makes the status tell the whole truth.

- An invalid recipe is `Failed=True` (reason `Invalid`, message = the validation errors), so
  `kubectl wait --for=condition=Failed` fires for it as for a stage out of retries.
- `StoreReadable`: False while a read the status depends on (a finished stage's metrics, a running
  stage's progress) fails; True again once it succeeds. It appears with the first failure only.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from .api.status import CONDITION_TYPES, Condition, ConditionType
from .conditions import DONE, set_condition, stage_list
from .observe import format_time
from .store_reader import Fact


def _with(status: dict[str, Any], type_: ConditionType, value: bool, reason: str, message: str,
          now: datetime, generation: int | None) -> dict[str, Any]:
    conditions = [Condition.model_validate(c) for c in status.get("conditions") or []]
    conditions = set_condition(conditions, type_, value, reason, message, format_time(now) or "", generation)
    conditions.sort(key=lambda c: CONDITION_TYPES.index(c.type))
    dumped = [c.model_dump(by_alias=True, exclude_none=True, mode="json") for c in conditions]
    return {**status, "conditions": dumped}


def invalid_is_failed(status: dict[str, Any], now: datetime, generation: int | None) -> dict[str, Any]:
    invalid: Mapping[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == "Invalid"), {})
    return _with(status, "Failed", True, "Invalid", invalid.get("message") or "the recipe is invalid", now, generation)


def store_errors(status: Mapping[str, Any], facts: Mapping[tuple[str, str], Fact]) -> dict[str, str]:
    """stage -> the error of a store read its status is waiting for (stale facts do not count)."""
    found: dict[str, str] = {}
    stages = status.get("stages") or {}
    for (kind, stage), fact in sorted(facts.items()):
        st = stages.get(stage)
        if fact.error is None or not isinstance(st, Mapping):
            continue
        if kind == "metrics" and st.get("phase") in DONE and fact.key == st.get("fingerprint") \
                and st.get("metrics") is None:
            found[stage] = f"metrics: {fact.error}"
        elif kind == "progress" and st.get("phase") == "Running":
            found[stage] = f"progress: {fact.error}"
    return found


def store_readable(status: dict[str, Any], facts: Mapping[tuple[str, str], Fact], now: datetime,
                   generation: int | None) -> dict[str, Any]:
    errors = store_errors(status, facts)
    if errors:
        names = sorted(errors)
        message = f"store reads failing for {stage_list(names)}: {names[0]} {errors[names[0]]}"[:1000]
        return _with(status, "StoreReadable", False, "StoreReadFailed", message, now, generation)
    if any(c.get("type") == "StoreReadable" for c in status.get("conditions") or []):
        return _with(status, "StoreReadable", True, "StoreReadable", "every store read succeeds", now, generation)
    return status
