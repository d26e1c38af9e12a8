"""The Argo CD health check (Lua) maps recipe conditions onto Argo CD health states."""

from __future__ import annotations

import lupa
import pytest

from tests.support.helpers import ROOT

SCRIPT = (ROOT / "charts" / "fathom-operator" / "docs" / "argocd-health.lua").read_text()


def health(obj: dict) -> dict:
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)

    def to_lua(value):
        if isinstance(value, dict):
            return lua.table_from({k: to_lua(v) for k, v in value.items()})
        if isinstance(value, list):
            return lua.table_from([to_lua(v) for v in value])
        return value

    lua.globals().obj = to_lua(obj)
    result = lua.execute(SCRIPT)
    return dict(result.items())


def recipe(conditions: list[tuple[str, str]], generation: int = 1, observed: int = 1, **status) -> dict:
    return {
        "metadata": {"name": "r", "generation": generation},
        "status": {"observedGeneration": observed, **status,
                   "conditions": [{"type": t, "status": s, "reason": "Because", "message": f"{t} says {s}"}
                                  for t, s in conditions]},
    }


@pytest.mark.parametrize("conditions,expected", [
    ([("Ready", "True"), ("Progressing", "False")], "Healthy"),
    ([("Progressing", "True"), ("Ready", "False")], "Progressing"),
    ([("Failed", "True"), ("Ready", "False")], "Degraded"),
    ([("Invalid", "True")], "Degraded"),
    ([("BudgetExceeded", "True"), ("Progressing", "False")], "Degraded"),
    ([("Suspended", "True"), ("Progressing", "False")], "Suspended"),
    ([("Failed", "False"), ("Suspended", "False"), ("Ready", "False")], "Progressing"),
])
def test_conditions_map_to_health(conditions, expected):
    result = health(recipe(conditions))
    assert result["status"] == expected


def test_degraded_carries_the_condition_message():
    assert health(recipe([("Failed", "True")]))["message"] == "Failed says True"


def test_no_status_yet_is_progressing():
    assert health({"metadata": {"name": "r", "generation": 1}})["status"] == "Progressing"


def test_stale_status_is_progressing_even_if_it_said_ready():
    result = health(recipe([("Ready", "True")], generation=3, observed=2))
    assert result["status"] == "Progressing" and "generation 3" in result["message"]


def test_progressing_names_the_current_stage():
    result = health(recipe([("Progressing", "True")], currentStage="sft-shortest"))
    assert result["message"] == "Progressing says True (stage sft-shortest)"
