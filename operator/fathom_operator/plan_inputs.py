"""What `plan()` takes, made ready: the validated recipe with what planning needs precomputed
(`parse`), the readable part of the current status (`read_status`), and the `Inputs` and `Options`.

Separate from `plan` because the operator parses a spec once per change and plans many times, and
because reading a hostile status part by part is its own concern.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from . import dag
from .api.recipe import API_VERSION, KIND, FathomRecipe
from .api.status import AttemptRecord, RecipeStatus, StageStatus
from .field_errors import FieldError, RecipeInvalid
from .fingerprints import stage_fingerprints
from .hardware import Calibration, CalibrationError, parse_calibration
from .observe import JobObs, PodObs
from .render import stage_gpus, stage_pods
from .store_reader import Fact
from .validate import validate_document


@dataclass(frozen=True)
class Options:
    backoff_seconds: float = 30.0
    backoff_cap_seconds: float = 900.0
    progress_seconds: float = 30.0  # progress.json is read at most this often per running stage
    retry_read_seconds: float = 120.0  # a failed metrics read is retried this much later


@dataclass(frozen=True)
class Parsed:
    recipe: FathomRecipe
    deps: dict[str, list[str]]
    order: list[str]
    fingerprints: dict[str, str]
    weights: dict[str, int]
    calibration: Calibration | None = None  # the operator's GPU calibration (Helm defaults.calibration)


@dataclass(frozen=True)
class Inputs:
    name: str
    namespace: str
    uid: str | None
    generation: int | None
    parsed: Parsed | list[FieldError]
    status: dict[str, Any] | None
    jobs: list[JobObs]
    pods: list[PodObs]
    facts: dict[tuple[str, str], Fact]
    now: datetime
    options: Options = Options()
    conflicts: Mapping[str, str] = field(default_factory=dict)  # object name -> why it is not ours
    retry: str | None = None  # the fathom.dev/retry annotation (retry.py)
    services: tuple[str, ...] | None = None  # the recipe's own Services, when listed (None: not this time)


def parse(name: str, namespace: str, spec: Any, defaults: dict[str, Any] | None = None) -> Parsed | list[FieldError]:
    """Validate like `fathom validate` does (field paths included; the operator's defaults under the
    spec), then precompute what plan() needs. Never raises: anything unexpected is an error on `spec`."""
    if not isinstance(spec, dict):
        return [FieldError("spec", "expected a mapping")]
    try:
        return _parse(name, namespace, spec, defaults)
    except RecipeInvalid as exc:
        return exc.errors
    except Exception as exc:  # a bug must make the recipe Invalid with a reason, never crash the operator
        return [FieldError("spec", f"could not be checked ({type(exc).__name__}: {str(exc)[:300]}); "
                                   "please report this as a bug")]


def _parse(name: str, namespace: str, spec: dict[str, Any], defaults: dict[str, Any] | None) -> Parsed:
    document = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name, "namespace": namespace},
                "spec": spec}
    recipe = validate_document(document, defaults)
    deps = dag.dependencies(recipe.spec)
    order = [n for level in dag.levels(deps) for n in level]
    weights = {s.name: stage_pods(s) * max(1, stage_gpus(recipe.spec, s)) for s in recipe.spec.stages}
    calibration = None
    if defaults and defaults.get("calibration"):
        try:
            calibration = parse_calibration(defaults["calibration"], "defaults.calibration")
        except CalibrationError:
            pass  # the admin's file is checked where it is loaded (`fathom operator`); the forecast uses the cited constants
    return Parsed(recipe, deps, order, stage_fingerprints(recipe, namespace, deps), weights, calibration)


def load_status(raw: Any) -> RecipeStatus:
    """The recipe's current status; unreadable parts are dropped rather than failing the recipe."""
    return read_status(raw)[0]


def read_status(raw: Any) -> tuple[RecipeStatus, list[str]]:
    """(the readable part of a status, what was dropped). Garbage counts as missing, part by part:
    a stage whose own fields are unreadable keeps its readable finished attempts (they were paid for)."""
    if raw is None or raw == {}:
        return RecipeStatus(), []
    if not isinstance(raw, Mapping):
        return RecipeStatus(), [f"status is {type(raw).__name__}, not a mapping: treated as missing"]
    problems: list[str] = []
    known = {f.alias or n for n, f in RecipeStatus.model_fields.items()}
    fields: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known or key == "stages":
            continue
        try:
            RecipeStatus.model_validate({key: value})
        except (ValueError, TypeError, RecursionError):
            problems.append(f"status.{key} is unreadable: treated as missing")
            continue
        fields[key] = value
    stages: dict[str, StageStatus] = {}
    found = raw.get("stages")
    if found is not None and not isinstance(found, Mapping):
        problems.append(f"status.stages is {type(found).__name__}, not a mapping: treated as missing")
    for name, value in (found.items() if isinstance(found, Mapping) else ()):
        if not isinstance(name, str):
            continue
        try:
            stages[name] = StageStatus.model_validate(value)
            continue
        except (ValueError, TypeError, RecursionError):
            problems.append(f"status.stages.{name[:80]} is unreadable: treated as missing")
        history = value.get("history") if isinstance(value, Mapping) else None
        kept = []
        for record in history if isinstance(history, list) else ():
            try:
                kept.append(AttemptRecord.model_validate(record))
            except (ValueError, TypeError, RecursionError):
                continue
        if kept:
            stages[name] = StageStatus(history=kept)
    try:
        status = RecipeStatus.model_validate(fields)
    except (ValueError, TypeError, RecursionError):
        problems.append("status is unreadable: treated as missing")
        status = RecipeStatus()
    return status.model_copy(update={"stages": stages}), problems
