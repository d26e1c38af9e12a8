"""Kubernetes-style conditions and the recipe-level roll-up of stage states (pure).

A condition's `lastTransitionTime` changes only when its status flips; reason and message may be
updated in place. Progress is the share of the recipe's GPU footprint that is done: every stage
weighs the GPUs it requests (pods x GPUs per pod; a CPU stage weighs 1), finished stages count fully
and running ones by their `progress.json` fraction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from .api.status import Condition, ConditionType

DONE = ("Succeeded", "Cached")
ACTIVE = ("Running", "Waiting", "Suspended")


def set_condition(conditions: list[Condition], type_: ConditionType, status: bool, reason: str, message: str,
                  now: str, generation: int | None) -> list[Condition]:
    value: Literal["True", "False"] = "True" if status else "False"
    old = next((c for c in conditions if c.type == type_), None)
    since = old.last_transition_time if old is not None and old.status == value else now
    new = Condition(type=type_, status=value, reason=reason, message=message,
                    last_transition_time=since, observed_generation=generation)
    return [new if c.type == type_ else c for c in conditions] if old is not None else [*conditions, new]


def progress_percent(phases: Mapping[str, str], fractions: Mapping[str, float | None], weights: Mapping[str, int]) -> str:
    total = sum(weights.values()) or 1
    done = 0.0
    for name, weight in weights.items():
        if phases.get(name) in DONE:
            done += weight
        elif phases.get(name) in ACTIVE:
            done += weight * (fractions.get(name) or 0.0)
    percent = int(done * 100 // total)
    if percent == 100 and any(phases.get(n) not in DONE for n in weights):
        percent = 99  # never claim 100% before the last stage finishes
    return f"{percent}%"


def current_stage(order: Sequence[str], phases: Mapping[str, str]) -> str | None:
    active = [n for n in order if phases.get(n) in ACTIVE]
    if not active:
        failed = [n for n in order if phases.get(n) == "Failed"]
        return failed[0] if failed else None
    return active[0] + (f" +{len(active) - 1}" if len(active) > 1 else "")


def describe_money(value: float) -> str:
    return f"${value:,.2f}"


def stage_list(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
