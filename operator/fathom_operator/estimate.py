"""The forecast as people and the status read it (pure): `fathom estimate`'s table and JSON, and
`status.forecast` - finished stages at what they cost, the others forecast from what has run so far."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from .api.status import ForecastStatus, StageForecastStatus, StageStatus
from .conditions import DONE
from .cost import format_usd, rounded
from .forecast import Forecast


def duration(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f}d"
    return f"{seconds / 3600:.1f}h" if seconds >= 3600 else f"{seconds / 60:.0f}m"


def render_table(fc: Forecast) -> str:
    """The forecast as text: one row per stage, TOTAL (against budgetUSD), then basis and problems."""
    head = ("STAGE", "TYPE", "PODS x GPUS", "GPU-HOURS", "USD", "WALL")
    rows = [(s.name, s.type, f"{s.pods} x {s.gpus_per_pod}", f"{s.gpu_hours:,.2f}", format_usd(s.usd),
             duration(s.wall_seconds)) for s in fc.stages]
    total = ("TOTAL", "", "", f"{fc.gpu_hours:,.2f}", format_usd(fc.usd), duration(fc.wall_seconds))
    widths = [max(len(r[i]) for r in [head, *rows, total]) for i in range(len(head))]

    def line(r: Iterable[str]) -> str:
        cells = list(r)
        return "  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    out = [f"{fc.recipe}: forecast", line(head), *(line(r) for r in rows), "-" * len(line(total))]
    out.append(line(total) + budget_verdict(fc))
    out += ["", "basis:", f"  {fc.model_basis}"] + [f"  {s.name}: {b}" for s in fc.stages for b in s.basis]
    out += [f"  {w}" for w in fc.warnings]
    if fc.problems:
        out += ["", "will not fit:"] + [f"  {p.path}: {p.problem.message}" for p in fc.problems]
    return "\n".join(out) + "\n"


def budget_verdict(fc: Forecast) -> str:
    if not fc.budget_usd:
        return ""
    share = fc.usd / fc.budget_usd
    return (f"  {share:.0%} of budget {format_usd(fc.budget_usd)}" if share <= 1 else
            f"  OVER budget {format_usd(fc.budget_usd)} by {format_usd(fc.usd - fc.budget_usd)}")


def to_dict(fc: Forecast) -> dict[str, Any]:
    """The forecast as JSON-able camelCase (`fathom estimate -o json`)."""
    return {
        "recipe": fc.recipe,
        "stages": [{"name": s.name, "type": s.type, "pool": s.pool, "pods": s.pods, "gpusPerPod": s.gpus_per_pod,
                    "gpuHours": s.gpu_hours, "cpuHours": s.cpu_hours, "usd": s.usd, "wallSeconds": s.wall_seconds,
                    "basis": list(s.basis)} for s in fc.stages],
        "total": {"gpuHours": fc.gpu_hours, "usd": fc.usd, "wallSeconds": fc.wall_seconds},
        "budgetUSD": fc.budget_usd,
        "warnings": list(fc.warnings),
        "problems": [{"stage": p.stage, "path": p.path, "message": p.problem.message} for p in fc.problems],
    }


# ------------------------------------------------------------------------------- status.forecast
def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 else None


def measured_from_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """What a finished stage's metrics.json says about its counts (the keys the stages write)."""
    found = {
        "problems": _number(metrics.get("kept", metrics.get("selected", metrics.get("problems")))),
        "rows": _number(metrics.get("rows")),
        "meanTokens": _number(metrics.get("meanTokens")),
    }
    completion = metrics.get("completionTokens")
    if found["meanTokens"] is None and isinstance(completion, Mapping):
        found["meanTokens"] = _number(completion.get("mean"))
    return {k: v for k, v in found.items() if v is not None}


def finished(stages: Mapping[str, StageStatus]) -> dict[str, StageStatus]:
    return {name: st for name, st in stages.items() if st.phase in DONE}


def measured_from_status(stages: Mapping[str, StageStatus]) -> dict[str, dict[str, float]]:
    """Measured facts of every finished stage: its counts and the GPU-hours it took."""
    return {name: {**measured_from_metrics(st.metrics or {}), "gpuHours": st.gpu_hours}
            for name, st in finished(stages).items()}


def forecast_fingerprint(fingerprints: Mapping[str, str], stages: Mapping[str, StageStatus]) -> str:
    """Changes exactly when the forecast's inputs do: the spec (fingerprints) or a stage finishing."""
    done = {name: [st.fingerprint, st.gpu_hours, bool(st.metrics)] for name, st in finished(stages).items()}
    document = json.dumps([sorted(fingerprints.items()), sorted(done.items())], default=str)
    return hashlib.sha256(document.encode()).hexdigest()[:16]


def forecast_status(fc: Forecast, stages: Mapping[str, StageStatus], fingerprint: str) -> ForecastStatus:
    """Finished stages at their cost ("spent"); the others forecast, "measured" when their inputs ran."""
    done = finished(stages)
    rows: dict[str, StageForecastStatus] = {}
    for row in fc.stages:
        st = done.get(row.name)
        if st is not None:
            rows[row.name] = StageForecastStatus(gpu_hours=st.gpu_hours, usd=st.cost_usd, wall_seconds=0, basis="spent")
        else:
            measured = any("measured" in b for b in row.basis)
            rows[row.name] = StageForecastStatus(gpu_hours=row.gpu_hours, usd=row.usd, wall_seconds=round(row.wall_seconds),
                                                 basis="measured" if measured else "forecast")
    usd = rounded(sum(r.usd for r in rows.values()))
    spent = sum(st.cost_usd for st in stages.values())
    basis = [*fc.warnings[:5], *(f"{p.path}: {p.problem.message}" for p in fc.problems)]
    return ForecastStatus(gpu_hours=rounded(sum(r.gpu_hours for r in rows.values())), usd=usd,
                          remaining_usd=rounded(max(0.0, usd - spent)), wall_seconds=round(fc.wall_seconds),
                          display=format_usd(usd).replace(",", ""), stages=rows, basis=basis,
                          fingerprint=fingerprint)
