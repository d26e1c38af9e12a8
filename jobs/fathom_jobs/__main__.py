"""`python -m fathom_jobs <stage-type> [--spec FILE]`: run one attempt of one stage.

The spec is the JSON document the operator renders (fathom_jobs.specs.JobSpec), read from FILE or
from the FATHOM_JOB_SPEC environment variable. Exit codes: 0 done, 2 bad input (one line on
stderr saying what), 143 SIGTERM (a training stage commits a checkpoint first: fathom_jobs.preemption),
1 anything else; whatever the exit, the pod's log goes to the store (fathom_jobs.joblog). Each stage
type's module (its `fathom_jobs.registry` row) lives in `fathom_jobs.stages` and exposes `run(job: JobSpec) -> None`; heavy libraries are imported there, not here.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import threading
import traceback
from pathlib import Path

from pydantic import ValidationError

from . import joblog
from .errors import StageInputError
from .preemption import EXIT_TERMINATED, Terminated, install_exit_on_sigterm
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
    sigterm = signal.getsignal(signal.SIGTERM)
    install_exit_on_sigterm()  # PID 1 would ignore SIGTERM: exit (and upload the log) instead
    tee = None if joblog.is_torchrun_worker() else joblog.start_tee()
    # The stages' own progress lines, on stdout: stderr stays the one-line bad-input message.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    package_log = logging.getLogger("fathom_jobs")
    package_log.addHandler(handler)
    level = package_log.level
    package_log.setLevel(logging.INFO)
    last_line = None
    code = 1
    try:
        try:
            job = load_job_spec(args.stage_type, args.spec)
            module = importlib.import_module(f"fathom_jobs.stages.{stage_type(args.stage_type).module}")
            module.run(job)
            code = 0
        except StageInputError as exc:
            # The pod's termination message: never a credential (a judge URL with user:key@, an echoed key).
            last_line = redact(f"fathom {args.stage_type}: {exc}")
            print(last_line, file=sys.stderr)
            code = EXIT_BAD_INPUT
        except Terminated as exc:  # SIGTERM, or training stopped on it after its checkpoint
            last_line = f"fathom {args.stage_type}: {exc}"
            print(last_line, file=sys.stderr)
            code = EXIT_TERMINATED
        except SystemExit as exc:  # a torchrun launch that failed: the workers said why
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
            if isinstance(exc.code, str):
                print(exc.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()  # here rather than by the interpreter, so the log holds it
            code = 1
    finally:
        package_log.removeHandler(handler)
        package_log.setLevel(level)
        if tee is not None:
            finish_log(tee, args.stage_type, args.spec, code, last_line)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, sigterm)  # as it was (main() called in-process: tests)
    return code


def finish_log(tee: joblog.Tee, stage_type_name: str, spec_path: str | None, code: int,
               last_line: str | None) -> None:
    """Stop teeing and upload the log to the output's `_logs/` (best effort, see fathom_jobs.joblog).
    Without a readable spec there is no output to put it in."""
    if threading.current_thread() is threading.main_thread():  # the work is over: a late SIGTERM must not cut the upload
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    tee.stop()
    job = _spec_for_log(spec_path)
    if job is None or job.type != stage_type_name:  # not this stage's spec: not this stage's output either
        return
    index = joblog.pod_index()
    storage = job.storage
    problem = joblog.upload_log(
        tee.path, lambda: joblog.open_log_store(job.output, storage.endpoint if storage else None,
                                                storage.region if storage else None,
                                                storage.path_style if storage else None),
        job.attempt, index)
    if problem is None:
        tee.path.unlink(missing_ok=True)
        return
    print(redact(f"fathom {stage_type_name}: could not upload this log to "
                 f"{joblog.log_uri(job.output, job.attempt, index)}: {problem}")[:1000], file=sys.stderr)
    if code != 0 and last_line:
        print(last_line, file=sys.stderr)  # the termination message is the log's tail: keep the reason last


def _spec_for_log(spec_path: str | None) -> JobSpec | None:
    """The job spec as far as it parses (its params need not): where the log goes."""
    try:
        text = Path(spec_path).read_text() if spec_path else os.environ.get("FATHOM_JOB_SPEC", "")
        return JobSpec.model_validate(json.loads(text)) if text else None
    except (OSError, ValueError):  # ValidationError and JSONDecodeError are ValueErrors
        return None


if __name__ == "__main__":
    sys.exit(main())
