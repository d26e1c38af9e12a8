"""curate: the seeds' bands exactly, ordering, what each keep mode produces, selection at a named
cap, problems stopped early by adaptive sampling, over-long chains, and the CLI."""

from __future__ import annotations

import json

import pytest

from fathom_jobs.datasets import SAMPLES, read_dataset, read_rows, write_dataset
from fathom_jobs.errors import StageInputError
from fathom_jobs.inputs import store_for
from fathom_jobs.specs import SEED_SYSTEM_PROMPT
from fathom_jobs.stages import curate
from fathom_jobs.stages.solve_rate import problem_row
from tests.support.jobs_helpers import file_uri, make_job, run_cli

# id -> (solve rate, difficulty); boundary values sit exactly on the seeds' band edges.
# Samples written before per-cap rates (one cap, `solve_rate` only) still curate as they did.
TABLE = {"s00": (0.0, 3), "s05": (0.05, 7), "s10": (0.1, 8), "s20": (0.2, 5), "s25": (0.25, 5), "s40": (0.4, None),
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
    # difficulty >= 5 and 0.2 < solve < 0.6; the unrated s40 is left out; solve desc, difficulty asc
    assert [r["id"] for r in rows] == ["s55b", "s55", "s40b", "s25"]
    assert [r["position"] for r in rows] == [0, 1, 2, 3]
    assert metrics["selected"] == 4 and metrics["unratedSelected"] == 0 and metrics["inSolveRateBand"] == 6
    assert metrics["cap"] is None  # samples without per-cap rates: their one solve_rate
    first = rows[0]
    assert first["prompt"] == [{"role": "system", "content": SEED_SYSTEM_PROMPT},
                               {"role": "user", "content": "Problem s55b?"}]
    # the shortest correct chain (35 + i tokens beats 40 + i), opened with <think> as R1 writes it
    content = "<think>\nreasoning s55b 44\n</think>\n\nSo \\boxed{1}"
    assert first["completion"] == [{"role": "assistant", "content": content}]
    assert metrics["completionTokens"] == {"min": 39, "mean": 41.75, "median": 42.0, "max": 44}


def test_unrated_problems_only_when_the_band_opts_in(tmp_path, data):
    rows, metrics = curated(tmp_path, data, "unrated", preset="curriculum",
                            select={"difficulty": {"min": 5, "includeUnrated": True},
                                    "solveRate": {"above": 0.2, "below": 0.6}})
    assert [r["id"] for r in rows] == ["s55b", "s55", "s40b", "s40", "s25"]  # unrated last among equal rates
    assert metrics["unratedSelected"] == 1


def test_wide_curriculum_reads_the_other_cards_band(tmp_path, data):
    rows, _ = curated(tmp_path, data, "wide", preset="curriculum-wide")
    assert [r["id"] for r in rows] == ["s60", "s55b", "s55", "s40b", "s25"]  # 0.2 < solve < 0.7


def test_rl_compression_prompts_leave_out_never_solved_problems(tmp_path, data):
    rows, metrics = curated(tmp_path, data, "rl", preset="rl-compression")
    # 0 < s <= 0.5 in input order: s00 would give GRPO all-zero reward groups
    assert [r["id"] for r in rows] == ["s05", "s10", "s20", "s25", "s40", "s40b", "s50"]
    assert set(rows[0]) == {"id", "prompt", "answer", "difficulty", "solve_rate"}
    assert rows[0]["prompt"][-1]["content"] == "Problem s05?" and rows[0]["answer"] == "1"
    assert metrics["rows"] == 7


def test_shortest_chains_band_and_bounds_are_inclusive(tmp_path, data):
    rows, metrics = curated(tmp_path, data, "shortest", preset="shortest-chains")
    assert [r["id"] for r in rows] == ["s10", "s20", "s25", "s40", "s40b"]  # 0.1 <= s <= 0.4
    assert all("</think>" in r["completion"][0]["content"] for r in rows)
    assert metrics["dropped"] == {"noCorrectChain": 0, "noSolution": 0, "tooLong": 0}
    wide, _ = curated(tmp_path, data, "shortest-wide", preset="shortest-chains-wide")
    assert [r["id"] for r in wide] == ["s05", "s10", "s20", "s25", "s40", "s40b"]  # 0 < s <= 0.4


def test_explicit_bands_override_the_preset_and_solution_keep(tmp_path, data):
    rows, metrics = curated(tmp_path, data, "solutions", preset="curriculum", keep="solution", order="hard-to-easy",
                            select={"difficulty": {"min": 1, "max": 6}, "solveRate": {"atLeast": 0.0, "atMost": 1.0}})
    # s25 and s50 have no reference solution, s40 no rating; hard-to-easy: solve asc, difficulty desc
    assert [r["id"] for r in rows] == ["s00", "s20", "s40b", "s55b", "s100"]
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
    with pytest.raises(StageInputError, match="no training rows: of 12 problems 0 are in the solve-rate band"):
        curated(tmp_path, data, "none", select={"solveRate": {"above": 1.0}})
    without_rates = read_dataset(data).drop_columns(["solve_rate"])
    plain = file_uri(tmp_path / "store" / "plain")
    write_dataset(store_for(plain), without_rates, without_rates.schema, fingerprint=None)
    with pytest.raises(StageInputError, match="lacks column\\(s\\) solve_rate"):
        curated(tmp_path, plain, "bad", preset="rl-compression")


# Rows of a solve-rate stage with maxTokens [6000, 16384], k = 4: chain (tokens, correct), a chain at
# 16,384 tokens hit the cap. Solve rates at 6,000 / 16,384: a .5/.75, b .25/.5, c 0/.5, d 1/1, e 0/0.
CAPS = [6000, 16384]
CHAINS = {"a": [(3000, True), (5000, True), (9000, True), (12000, False)],
          "b": [(4000, True), (10000, True), (15000, False), (16384, False)],
          "c": [(7000, True), (8000, False), (2000, False), (11000, True)],
          "d": [(1000, True), (1500, True), (2500, True), (3500, True)],
          "e": [(16384, False), (16384, False), (9000, False), (3000, False)]}


def capped_chain(pid: str, tokens: int, correct: bool) -> dict:
    return {**chain(tokens, correct, pid), "finish_reason": "length" if tokens == 16384 else "stop"}


def multi_cap_rows(extra: dict | None = None) -> list[dict]:
    rows = []
    for pid, chains in {**CHAINS, **(extra or {})}.items():
        problem = {"id": pid, "problem": f"Problem {pid}?", "answer": "1", "source": "t", "solution": f"By {pid}.",
                   "difficulty": 6, "difficulty_raw": "6"}
        rows.append(problem_row(problem, [capped_chain(pid, t, ok) for t, ok in chains], CAPS, 4))
    return rows


def write_samples(tmp_path, rows, name="multi") -> str:
    uri = file_uri(tmp_path / "store" / name)
    write_dataset(store_for(uri).child("shards/0-of-1"), rows, SAMPLES, fingerprint=name)
    return uri


def ids(rows):
    return [r["id"] for r in rows]


def test_the_band_reads_the_named_cap_and_defaults_to_the_largest(tmp_path, monkeypatch):
    monkeypatch.setenv("FATHOM_CACHE_DIR", str(tmp_path / "cache"))
    data = write_samples(tmp_path, multi_cap_rows())
    band = {"above": 0.2, "below": 0.6}
    at_6k, m6 = curated(tmp_path, data, "c6", select={"solveRate": {**band, "cap": 6000}}, order="easy-to-hard")
    assert ids(at_6k) == ["a", "b"] and [r["solve_rate"] for r in at_6k] == [0.5, 0.25] and m6["cap"] == 6000
    at_16k, m16 = curated(tmp_path, data, "c16", select={"solveRate": band}, order="easy-to-hard")
    assert ids(at_16k) == ["b", "c"] and [r["solve_rate"] for r in at_16k] == [0.5, 0.5] and m16["cap"] == 16384
    # c's shortest correct chain is its 7,000-token one; b's the 4,000-token one
    assert [r["completion"][0]["content"].split()[3] for r in at_16k] == ["4000", "7000"]
    rl, metrics = curated(tmp_path, data, "rl", preset="rl-compression")  # 0 < s <= 0.5 at the preset's 6,000
    assert ids(rl) == ["a", "b"] and metrics["cap"] == 6000


def test_shortest_chain_is_the_shortest_correct_within_the_cap(tmp_path, monkeypatch):
    monkeypatch.setenv("FATHOM_CACHE_DIR", str(tmp_path / "cache"))
    data = write_samples(tmp_path, multi_cap_rows())
    rows, metrics = curated(tmp_path, data, "low", select={"solveRate": {"atLeast": 0.0, "atMost": 0.3, "cap": 6000}})
    # b: its 4,000-token chain; c and e have no chain correct within 6,000 tokens (c's are 7,000 and 11,000)
    assert ids(rows) == ["b"] and metrics["dropped"]["noCorrectChain"] == 2


def test_caps_the_samples_do_not_carry_are_input_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("FATHOM_CACHE_DIR", str(tmp_path / "cache"))
    data = write_samples(tmp_path, multi_cap_rows())
    with pytest.raises(StageInputError, match="select.solveRate.cap 8000 is not a cap of the samples "
                                              "\\(they carry caps 6000, 16384\\)"):
        curated(tmp_path, data, "bad", select={"solveRate": {"above": 0.2, "cap": 8000}})
    only_6k = [problem_row({k: v for k, v in r.items() if k not in ("k", "solve_rate", "solve_rates", "decided",
                                                                       "samples")}, r["samples"], [6000], 4)
               for r in multi_cap_rows()]
    one_cap = write_samples(tmp_path, only_6k, "one-cap")
    rows, metrics = curated(tmp_path, one_cap, "one", preset="rl-compression")  # its cap 6,000 is carried anyway
    assert metrics["cap"] == 6000 and ids(rows) == ["a", "b"]  # 0 < s <= 0.5 at 6,000: a .5, b .25
    rows, metrics = curated(tmp_path, one_cap, "one-16k", preset="curriculum")  # one cap: read at it
    assert metrics["cap"] == 6000 and ids(rows) == ["a", "b"]


def test_problems_stopped_early_are_never_selected_and_must_be_outside_the_band(tmp_path, monkeypatch):
    monkeypatch.setenv("FATHOM_CACHE_DIR", str(tmp_path / "cache"))
    rows = multi_cap_rows()
    # f: 3 of 3 chains right when sampling stopped: its final rate at k = 4 is 0.75 or 1
    f = {"id": "f", "problem": "Problem f?", "answer": "1", "source": "t", "solution": "By f.", "difficulty": 3,
         "difficulty_raw": "3"}
    stopped = problem_row(f, [capped_chain("f", t, True) for t in (1000, 2000, 3000)], CAPS, 4)
    assert stopped["decided"] == "outside" and stopped["solve_rate"] is None
    data = write_samples(tmp_path, rows + [stopped])
    chosen, metrics = curated(tmp_path, data, "mid", select={"solveRate": {"above": 0.2, "below": 0.6}})
    assert ids(chosen) == ["b", "c"] and metrics["stoppedEarly"] == 1
    with pytest.raises(StageInputError, match="1 problem\\(s\\) \\(f\\) were stopped early by the solve-rate "
                                              "stage but could have ended in this stage's solveRate band"):
        curated(tmp_path, data, "high", select={"solveRate": {"atLeast": 0.7}})
    # f (difficulty 3) is outside this stage's difficulty band: it could not have been selected either way
    rated, metrics = curated(tmp_path, data, "high-rated", select={"solveRate": {"atLeast": 0.7},
                                                                   "difficulty": {"min": 5}})
    assert ids(rated) == ["a", "d"] and metrics["stoppedEarly"] == 1


def test_over_long_chains_are_dropped_and_counted(tmp_path, monkeypatch):
    monkeypatch.setenv("FATHOM_CACHE_DIR", str(tmp_path / "cache"))
    data = write_samples(tmp_path, multi_cap_rows())
    band = {"solveRate": {"above": 0.2, "below": 0.6}}
    rows, metrics = curated(tmp_path, data, "short", select=band, maxChainTokens=5000)
    assert ids(rows) == ["b"] and metrics["droppedTooLong"] == 1  # c's shortest correct chain has 7,000 tokens
    assert metrics["dropped"]["tooLong"] == 1
    rows, metrics = curated(tmp_path, data, "all", select={"solveRate": {"above": 0.4}}, keep="all-correct-chains",
                            maxChainTokens=9000)
    # a: 3,000, 5,000, 9,000; b: 4,000 (10,000 left out); c: 7,000 (11,000 left out); d: all four
    assert ids(rows) == ["a-0", "a-1", "a-2", "b-0", "c-0", "d-0", "d-1", "d-2", "d-3"]
    assert metrics["droppedTooLong"] == 2 and metrics["completionTokens"]["max"] == 9000
    with pytest.raises(StageInputError, match="maxChainTokens applies to sampled chains; keep solution has none"):
        curated(tmp_path, data, "sol", select=band, keep="solution", maxChainTokens=5000)


def test_cli_curates(tmp_path, data):
    job = make_job("curate", {"data": data, "preset": "curriculum"}, "file://./runs/curriculum")
    result = run_cli(job, tmp_path)
    assert result.returncode == 0, result.stderr
    assert [r["id"] for r in read_rows(file_uri(tmp_path / "runs" / "curriculum"))][:2] == ["s55b", "s55"]
