"""The stage types: one row each, and everything that varies by stage type derives from it.

Both sides read this table: the operator builds the CRD's stage models, validation (which stages
may be sharded or span nodes, what each produces), image choice and the memo check from it; the job
entry point finds the stage's module here. Adding a stage type is a row here plus its module in
`fathom_jobs.stages` (exposing `run(job)`); nothing else names stage types.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import specs

# The image families a stage runs in (Dockerfiles under images/; `spec.images.<family>` overrides).
FAMILIES = ("data", "infer", "train", "merge")


@dataclass(frozen=True)
class StageType:
    name: str  # the `type:` a recipe writes
    params: type[specs.Spec]  # parameter model, embedded in the CRD and sent to the Job
    output: Callable[[Any], str]  # params -> the artifact kind produced (specs.MODEL, ...)
    family: Callable[[Any], str]  # params -> image family
    module: str  # fathom_jobs.stages.<module>, exposing run(job: JobSpec) -> None
    inputs: Callable[[dict[str, Any]], list[str]]  # resolved params -> input URIs its fingerprint covers
    trains: bool = False  # checkpoints and resumes; may span nodes
    samples: bool = False  # generates per problem; may be sharded
    cpu_only: bool = False  # never needs a GPU


def _always(value: str) -> Callable[[Any], str]:
    return lambda _params: value


def _data(params: dict[str, Any]) -> list[str]:
    return [params["data"]]


def _data_and_model(params: dict[str, Any]) -> list[str]:
    return [params["data"], params["model"]]


def _annotate_inputs(params: dict[str, Any]) -> list[str]:
    judge = params.get("judge") or {}
    local = judge.get("backend", "openai") != "openai"  # a local judge's model is an input like any other
    return [params["data"], *([judge["model"]] if local else [])]


def _annotate_family(params: specs.AnnotateParams) -> str:
    return "data" if params.judge.backend == "openai" else "infer"  # a local judge needs the vLLM image


STAGE_TYPES: dict[str, StageType] = {row.name: row for row in (
    StageType("prepare", specs.PrepareParams, _always(specs.PROBLEMS), _always("data"), "prepare",
              lambda p: [s["uri"] for s in p.get("sources", [])] + list(p.get("decontaminate", [])),
              cpu_only=True),
    StageType("annotate", specs.AnnotateParams, _always(specs.PROBLEMS), _annotate_family, "annotate",
              _annotate_inputs, samples=True),
    StageType("solve-rate", specs.SolveRateParams, _always(specs.SAMPLES), _always("infer"), "solve_rate",
              _data_and_model, samples=True),
    StageType("curate", specs.CurateParams, specs.CurateParams.output_kind, _always("data"), "curate", _data,
              cpu_only=True),
    StageType("grpo", specs.GrpoParams, _always(specs.MODEL), _always("train"), "grpo", _data_and_model,
              trains=True),
    StageType("sft", specs.SftParams, _always(specs.MODEL), _always("train"), "sft", _data_and_model,
              trains=True),
    StageType("merge", specs.MergeParams, _always(specs.MODEL), _always("merge"), "merge",
              lambda p: [m["model"] for m in p.get("models", [])]),
    StageType("eval", specs.EvalParams, _always(specs.RESULTS), _always("infer"), "evaluate",
              lambda p: list(p.get("models", [])) + list(p.get("benchmarks", [])), samples=True),
)}
NAMES = tuple(STAGE_TYPES)


def stage_type(name: str) -> StageType:
    """The row of a stage type; KeyError names the known ones."""
    try:
        return STAGE_TYPES[name]
    except KeyError:
        raise KeyError(f"unknown stage type {name!r}; expected one of {', '.join(NAMES)}") from None
