"""curate: the seeds' bands exactly, ordering, what each keep mode produces, and the CLI."""

from __future__ import annotations

import json

import pytest

from fathom_jobs.datasets import SAMPLES, read_dataset, read_rows, write_dataset
from fathom_jobs.errors import StageInputError
from fathom_jobs.inputs import store_for
from fathom_jobs.specs import SEED_SYSTEM_PROMPT
from fathom_jobs.stages import curate
from tests.support.jobs_helpers import file_uri, make_job, run_cli

# id -> (solve rate, difficulty); boundary values sit exactly on the seeds' band edges.
TABLE = {"s00": (0.0, 3), "s10": (0.1, 8), "s20": (0.2, 5), "s25": (0.25, 5), "s40": (0.4, None),
         "s40b": (0.4, 5), "s50": (0.5, 4), "s55": (0.55, 9), "s55b": (0.55, 6), "s60": (0.6, 7), "s100": (1.0, 6)}


def chain(tokens: int, correct: bool, tag: str) -> dict:
    return {"text": f"reasoning {tag} {tokens}\n</think>\n\nSo \\boxed{{1}}", "tokens": tokens,
            "finish_reason": "stop", "answer": "1" if correct else "2", "correct": correct}


def solve_rate_table(tmp_path) -> str:
    rows = []
    for i, (pid, (rate, difficulty)) in enumerate(TABLE.items()):
        samples = [chain(50 + i, False, pid), chain(40 + i, rate > 0, pid), chain(30 + i, False, pid),
                   chain(35 + i, rate > 0, pid)]
        rows.append({"id": pid, "problem": f"Problem {pid}?", "answer": "1", "source": "t",
                     "solution": None if pid in ("s25", "s50") else f"Because {pid}.", "difficulty": difficulty,
                     "difficulty_raw": str(difficulty), "k": 4, "solve_rate": rate, "samples": samples})
    uri = file_uri(tmp_path / "store" / "solve")
    write_dataset(store_for(uri).child("shards/0-of-1"), rows, SAMPLES, fingerprint="solve")
    return uri


@pytest.fixture
def data(tmp_path, monkeypatch):
    monkeypatch.setenv("FATHOM_CACHE_DIR", str(tmp_path / "cache"))
    return solve_rate_table(tmp_path)


def curated(tmp_path, data, name, **params):
    job = make_job("curate", {"data": data, **params}, file_uri(tmp_path / "store" / name))
    curate.run(job)
    metrics = json.loads((tmp_path / "store" / name / "metrics.json").read_text())
    return read_rows(job.output), metrics


def test_curriculum_band_and_easy_to_hard_order(tmp_path, data):
    rows, metrics = curated(tmp_path, data, "curriculum", preset="curriculum")
    # difficulty >= 5 and 0.2 < solve < 0.6; the unrated s40 passes; solve desc, difficulty asc, unrated last
    assert [r["id"] for r in rows] == ["s55b", "s55", "s40b", "s40", "s25"]
    assert [r["position"] for r in rows] == [0, 1, 2, 3, 4]
    assert metrics["selected"] == 5 and metrics["unratedSelected"] == 1 and metrics["inSolveRateBand"] == 6
    first = rows[0]
    assert first["prompt"] == [{"role": "system", "content": SEED_SYSTEM_PROMPT},
                               {"role": "user", "content": "Problem s55b?"}]
    # the shortest correct chain (35 + i tokens beats 40 + i), opened with <think> as R1 writes it
    content = "<think>\nreasoning s55b 43\n</think>\n\nSo \\boxed{1}"
    assert first["completion"] == [{"role": "assistant", "content": content}]
    assert metrics["completionTokens"] == {"min": 38, "mean": 40.4, "median": 40, "max": 43}


def test_rl_compression_prompts(tmp_path, data):
    rows, metrics = curated(tmp_path, data, "rl", preset="rl-compression")
    assert [r["id"] for r in rows] == ["s00", "s10", "s20", "s25", "s40", "s40b", "s50"]  # 0 <= s <= 0.5, input order
    assert set(rows[0]) == {"id", "prompt", "answer", "difficulty", "solve_rate"}
    assert rows[0]["prompt"][-1]["content"] == "Problem s00?" and rows[0]["answer"] == "1"
    assert metrics["rows"] == 7


def test_shortest_chains_band_and_bounds_are_inclusive(tmp_path, data):
    rows, metrics = curated(tmp_path, data, "shortest", preset="shortest-chains")
    assert [r["id"] for r in rows] == ["s10", "s20", "s25", "s40", "s40b"]  # 0.1 <= s <= 0.4
    assert all("</think>" in r["completion"][0]["content"] for r in rows)
    assert metrics["dropped"] == {"noCorrectChain": 0, "noSolution": 0}


def test_explicit_bands_override_the_preset_and_solution_keep(tmp_path, data):
    rows, metrics = curated(tmp_path, data, "solutions", preset="curriculum", keep="solution", order="hard-to-easy",
                            select={"difficulty": {"min": 1, "max": 6}, "solveRate": {"atLeast": 0.0, "atMost": 1.0}})
    # s25 and s50 have no reference solution; hard-to-easy: solve asc, difficulty desc
    assert [r["id"] for r in rows] == ["s00", "s20", "s40b", "s40", "s55b", "s100"]
    assert metrics["dropped"]["noSolution"] == 2
    assert rows[0]["completion"][0]["content"] == ("<think>\nBecause s00.\n</think>\n\n"
                                                   "The final answer is $\\boxed{1}$.")


def test_all_correct_chains_and_shuffle(tmp_path, data):
    rows, _ = curated(tmp_path, data, "all", keep="all-correct-chains", order="shuffle",
                      select={"solveRate": {"above": 0.5}})
    assert sorted(r["id"] for r in rows) == sorted(f"{p}-{j}" for p in ("s55", "s55b", "s60", "s100") for j in (1, 3))
    again, _ = curated(tmp_path, data, "all-again", keep="all-correct-chains", order="shuffle",
                       select={"solveRate": {"above": 0.5}})
    assert [r["id"] for r in again] == [r["id"] for r in rows]


def test_nothing_selected_is_an_input_error(tmp_path, data):
    with pytest.raises(StageInputError, match="no training rows: of 11 problems 0 are in the solve-rate band"):
        curated(tmp_path, data, "none", select={"solveRate": {"above": 1.0}})
    without_rates = read_dataset(data).drop_columns(["solve_rate"])
    plain = file_uri(tmp_path / "store" / "plain")
    write_dataset(store_for(plain), without_rates, without_rates.schema, fingerprint=None)
    with pytest.raises(StageInputError, match="lacks column\\(s\\) solve_rate"):
        curated(tmp_path, plain, "bad", preset="rl-compression")


def test_cli_curates(tmp_path, data):
    job = make_job("curate", {"data": data, "preset": "curriculum"}, "file://./runs/curriculum")
    result = run_cli(job, tmp_path)
    assert result.returncode == 0, result.stderr
    assert [r["id"] for r in read_rows(file_uri(tmp_path / "runs" / "curriculum"))][:2] == ["s55b", "s55"]
