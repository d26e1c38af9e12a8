"""`python -m fathom_jobs <stage-type> [--spec FILE]`: run one attempt of one stage.

The spec is the JSON document the operator renders (fathom_jobs.specs.JobSpec), read from FILE or
from the FATHOM_JOB_SPEC environment variable. Exit codes: 0 done, 2 bad input (one line on
stderr saying what), 1 anything else. Each stage type's module (its `fathom_jobs.registry` row) lives in
`fathom_jobs.stages` and exposes `run(job: JobSpec) -> None`; heavy libraries are imported there, not here.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

from pydantic import ValidationError

from .errors import StageInputError
from .redact import redact
from .registry import NAMES, stage_type
from .specs import JobSpec

EXIT_BAD_INPUT = 2


def _first_error(exc: ValidationError, prefix: str) -> str:
    first = exc.errors(include_url=False)[0]
    where = prefix + ".".join(str(p) for p in first["loc"])
    return f"job spec field {where}: {first['msg']}"


def load_job_spec(stage_type: str, spec_path: str | None) -> JobSpec:
    if spec_path:
        try:
            text = Path(spec_path).read_text()
        except OSError as exc:
            raise StageInputError(f"cannot read spec file {spec_path}: {exc.strerror}") from None
    else:
        text = os.environ.get("FATHOM_JOB_SPEC", "")
        if not text:
            raise StageInputError("no job spec: pass --spec FILE or set FATHOM_JOB_SPEC")
    try:
        job = JobSpec.model_validate(json.loads(text))
    except json.JSONDecodeError as exc:
        raise StageInputError(f"job spec is not JSON: {exc.msg} at line {exc.lineno}") from None
    except ValidationError as exc:
        raise StageInputError(_first_error(exc, "")) from None
    if job.type != stage_type:
        raise StageInputError(f"job spec is for a {job.type} stage, but {stage_type} was asked for")
    try:
        job.typed_params()
    except ValidationError as exc:
        raise StageInputError(_first_error(exc, "params.")) from None
    return job


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fathom_jobs", description=__doc__.splitlines()[0])
    parser.add_argument("stage_type", choices=NAMES)
    parser.add_argument("--spec", help="JobSpec JSON file (default: $FATHOM_JOB_SPEC)")
    args = parser.parse_args(argv)
    try:
        job = load_job_spec(args.stage_type, args.spec)
        module = importlib.import_module(f"fathom_jobs.stages.{stage_type(args.stage_type).module}")
        module.run(job)
    except StageInputError as exc:
        # The pod's termination message: never a credential (a judge URL with user:key@, an echoed key).
        print(redact(f"fathom {args.stage_type}: {exc}"), file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
