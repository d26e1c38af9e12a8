"""prepare: field mapping, filters, answer checks, decontamination and deduplication, with counts."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fathom_jobs.datasets import read_rows, read_shipped
from fathom_jobs.dedup import exact_key
from fathom_jobs.errors import StageInputError
from fathom_jobs.stages import prepare
from fathom_jobs.stages.prepare import normalise_answer
from tests.support.jobs_helpers import file_uri, make_job, run_cli

AMC = read_shipped("amc23")
AIME25 = read_shipped("aime25")


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FATHOM_CACHE_DIR", str(tmp_path / "cache"))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return file_uri(path)


def planted_corpus(tmp_path):
    """Two sources in different shapes, with every rule's victims planted; returns (sources, expected)."""
    a_rows = [{"question": r["problem"], "final": r["answer"], "origin": "olympiads"} for r in AMC[:20]]
    a_rows += [{"question": f"Filtered problem number {i} about triangles.", "final": "1", "origin": "cn_k12"}
               for i in range(3)]
    a_rows += [{"question": "Prove that there are infinitely many primes.", "final": "proof", "origin": "aops"},
               {"question": "Show that the sum of two odd numbers is even.", "final": None, "origin": "aops"},
               {"question": "   ", "final": "3", "origin": "aops"}]
    b_rows = [{"problem": r["problem"], "answer": str(r["answer"]), "solution": "Work it out.", "source": "amc"}
              for r in AMC[20:40]]
    b_rows += [
        # exact duplicates: re-typeset and re-spaced, and verbatim
        {"problem": "  " + AMC[0]["problem"].upper().replace("$", "").replace(".", " ."), "answer": "27"},
        {"problem": AMC[21]["problem"], "answer": str(AMC[21]["answer"])},
        # near duplicates: a sentence appended; one word changed
        {"problem": AMC[4]["problem"] + " Explain briefly.", "answer": "36"},
        {"problem": AMC[9]["problem"].replace("pizza", "cake", 1), "answer": "4"},
        # AIME25: verbatim (one twice), re-typeset, embedded in a longer text
        *[{"problem": AIME25[i]["problem"], "answer": str(AIME25[i]["answer"])} for i in (0, 1, 2, 2)],
        {"problem": AIME25[3]["problem"].replace("\\(", "$").replace("\\)", "$").replace(" ", "  "), "answer": "1"},
        {"problem": "Solve the following. " + AIME25[4]["problem"] + " Give an integer.", "answer": "2"},
        # shorter than the 13-gram: caught by whole-text match against the custom eval set
        {"problem": "Compute 7 times 8 .", "answer": "56"},
        {"problem": "Compute 7 times 9.", "answer": "63"},
    ]
    for row in b_rows:
        row.setdefault("solution", None)
        row.setdefault("source", "amc")
    pq.write_table(pa.Table.from_pylist(b_rows), tmp_path / "b.parquet")
    sources = [
        {"uri": write_jsonl(tmp_path / "a.jsonl", a_rows), "where": {"origin": ["olympiads", "aops"]},
         "fields": {"problem": "question", "answer": "final", "source": "origin"}},
        {"uri": file_uri(tmp_path / "b.parquet")},
    ]
    short_eval = write_jsonl(tmp_path / "short-eval.jsonl", [{"problem": "compute 7 times 8", "answer": "56"}])
    expected_removed = {"filtered": 3, "no_answer": 2, "no_problem": 1, "contaminated": 7,
                        "exact_duplicate": 2, "near_duplicate": 2, "over_cap": 0}
    return sources, ["aime25", "hmmt25", short_eval], len(a_rows) + len(b_rows), expected_removed


def test_prepare_removes_every_planted_row_and_counts_it(tmp_path):
    sources, decontaminate, total, expected_removed = planted_corpus(tmp_path)
    out = tmp_path / "store" / "corpus"
    prepare.run(make_job("prepare", {"sources": sources, "decontaminate": decontaminate}, file_uri(out)))

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["read"] == total
    assert metrics["removed"] == expected_removed
    assert metrics["contaminatedBy"] == {"aime25": 6, file_uri(tmp_path / "short-eval.jsonl"): 1}
    rows = read_rows(file_uri(out))
    assert metrics["kept"] == len(rows) == 40 + 1  # the 40 AMC problems and "Compute 7 times 9."
    assert {r["problem"] for r in rows} == {r["problem"].strip() for r in AMC} | {"Compute 7 times 9."}
    assert len({r["id"] for r in rows}) == len(rows)
    assert not {exact_key(r["problem"]) for r in rows} & {exact_key(r["problem"]) for r in AIME25}
    by_problem = {r["problem"]: r for r in rows}
    first = by_problem[AMC[0]["problem"].strip()]
    assert (first["answer"], first["source"], first["solution"]) == ("27", "olympiads", None)
    assert by_problem[AMC[20]["problem"].strip()]["solution"] == "Work it out."
    assert metrics["keptBySource"] == {"olympiads": 20, "amc": 21}

    examples = json.loads((out / "removed.json").read_text())
    assert {e["benchmark"] for e in examples["contaminated"]} == {"aime25"}  # the first five
    assert examples["near_duplicate"][0]["jaccard"] >= 0.85
    assert examples["exact_duplicate"][1]["problem"] == AMC[21]["problem"]
    assert (out / "_MANIFEST.json").exists()


def test_prepare_cap_is_deterministic_and_mixes_sources(tmp_path):
    params = {"sources": [{"uri": "amc23"}, {"uri": "aime24"}], "maxProblems": 12}
    kept = []
    for name in ("one", "two"):
        prepare.run(make_job("prepare", params, file_uri(tmp_path / name)))
        kept.append([r["id"] for r in read_rows(file_uri(tmp_path / name))])
    assert kept[0] == kept[1] and len(kept[0]) == 12
    sources = {r["source"] for r in read_rows(file_uri(tmp_path / "one"))}
    assert sources == {"amc23", "aime24"}
    metrics = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert metrics["removed"]["over_cap"] == metrics["read"] - 12 - sum(
        v for k, v in metrics["removed"].items() if k != "over_cap")


@pytest.mark.parametrize("value,expected", [
    (27.0, "27"), (0.5, "0.5"), (70, "70"), ("$\\frac{1}{2}$", "\\frac{1}{2}"), ("proof", None),
    ("", None), (None, None), (float("nan"), None), ([1, 2], "1, 2"),
])
def test_answers_are_normalised_or_rejected(value, expected):
    assert normalise_answer(value) == expected


def test_bad_mapping_is_a_stage_input_error(tmp_path):
    uri = write_jsonl(tmp_path / "c.jsonl", [{"question": "What is 1+1?", "answer": "2"}])
    job = make_job("prepare", {"sources": [{"uri": uri, "fields": {"answer": "solution_final"}}]},
                   file_uri(tmp_path / "out"))
    with pytest.raises(StageInputError, match="fields.answer names column 'solution_final'"):
        prepare.run(job)
    no_answers = write_jsonl(tmp_path / "d.jsonl", [{"problem": "Prove it.", "answer": "proof"}])
    with pytest.raises(StageInputError, match="no row has a checkable answer"):
        prepare.run(make_job("prepare", {"sources": [{"uri": no_answers}]}, file_uri(tmp_path / "out")))


def test_cli_runs_the_demo_sources_and_rejects_a_missing_corpus(tmp_path):
    job = make_job("prepare", {"sources": [{"uri": "aime24"}, {"uri": "aime25"}]}, "file://./runs/corpus")
    result = run_cli(job, tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "runs" / "corpus" / "metrics.json").read_text())
    assert "aime25" not in metrics["keptBySource"] and metrics["contaminatedBy"]["aime25"] >= 30

    missing = make_job("prepare", {"sources": [{"uri": "file://./nowhere.jsonl"}]}, "file://./runs/x")
    result = run_cli(missing, tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "nowhere.jsonl" in result.stderr
