"""`python -m fathom_jobs <type>`: bad input is one line and exit code 2, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fathom_operator.render import job_spec, stage_by_name
from fathom_operator.validate import load_recipe
from tests.support.helpers import EXAMPLES


def run_job(*args: str, env_spec: str | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin"}
    if env_spec is not None:
        env["FATHOM_JOB_SPEC"] = env_spec
    return subprocess.run([sys.executable, "-m", "fathom_jobs", *args], capture_output=True, text=True,
                          env=env, timeout=60)


def rendered_spec(stage: str) -> dict:
    recipe = load_recipe((EXAMPLES / "fathom-r1-14b.yaml").read_text())
    return job_spec(recipe, stage_by_name(recipe.spec, stage), 0, "ml").model_dump(by_alias=True, mode="json")


@pytest.mark.parametrize("spec_text,expected", [
    (None, "fathom sft: no job spec: pass --spec FILE or set FATHOM_JOB_SPEC"),
    ("{not json", "fathom sft: job spec is not JSON: Expecting property name enclosed in double quotes at line 1"),
    (json.dumps({**rendered_spec("sft-curriculum"), "type": "merge"}),
     "fathom sft: job spec is for a merge stage, but sft was asked for"),
])
def test_bad_spec_exits_2_with_one_line(spec_text, expected):
    result = run_job("sft", env_spec=spec_text)
    assert result.returncode == 2
    assert result.stderr.strip() == expected


def test_spec_with_bad_params_names_the_field(tmp_path):
    doc = rendered_spec("sft-curriculum")
    doc["params"]["maxLength"] = -1
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(doc))
    result = run_job("sft", "--spec", str(path))
    assert result.returncode == 2
    assert "maxLength" in result.stderr and "Traceback" not in result.stderr


def test_rendered_spec_round_trips_into_typed_params():
    from fathom_jobs.specs import JobSpec, SftParams

    job = JobSpec.model_validate(rendered_spec("sft-curriculum"))
    params = job.typed_params()
    assert isinstance(params, SftParams) and params.passes == 3 and params.data.startswith("s3://")
