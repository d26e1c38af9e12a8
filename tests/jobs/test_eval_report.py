"""The eval report (Markdown + self-contained HTML), the status conversion and `fathom report`."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser

import pytest

from fathom_jobs.report import render_html, render_markdown, write_report
from fathom_operator.api.status import RecipeStatus
from fathom_operator.cli import main as fathom
from fathom_operator.results import eval_status, merge_results, report_from_status, status_results


def entry(p1, cons, tokens, k=64):
    return {"pass@1": p1, "cons@k": cons, "k": k, "samples": 30 * k, "problems": 30, "meanTokens": tokens,
            "medianTokens": tokens - 500, "cappedPercent": 2.5, "noAnswerPercent": 1.0,
            "pass@k": {"1": p1, "8": min(100.0, p1 + 20), "64": min(100.0, p1 + 35)},
            "limo": {"pass@1": p1 + 0.5, "cons@k": cons + 1}}


RESULTS = {
    "DeepSeek-R1-Distill-Qwen-14B": {"aime25": entry(45.5, 63.33, 11200.0), "hmmt25": entry(30.0, 50.0, 12500.0)},
    "fathom-r1-14b": {"aime25": entry(52.71, 76.7, 10500.0), "hmmt25": entry(35.26, 56.7, 11900.0)},
}
COSTS = {"sft-curriculum": {"gpuHours": 48.0, "costUSD": 135.84}, "sft-shortest": {"gpuHours": 128.0, "costUSD": 362.24}}
META = {"title": "fathom-r1-14b / eval", "models": {"fathom-r1-14b": "s3://runs/ml/r/fathom-r1-14b/"},
        "settings": {"samples per problem": 64}}


class Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict] = []
        self.cells: list[str] = []
        self.external: list[str] = []
        self._in_cell = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        if tag in ("link", "script") or (tag == "img" and not attrs["src"].startswith("data:")):
            self.external.append(tag)
        self._in_cell = tag == "td"

    def handle_data(self, data):
        if self._in_cell:
            self.cells.append(data)


def parse(page: str) -> Page:
    parser = Page()
    parser.feed(page)
    parser.close()
    return parser


def test_html_report_is_self_contained_with_tables_and_png_plots():
    page = parse(render_html(RESULTS, costs=COSTS, meta=META))
    assert not page.external
    assert len(page.images) == 3  # accuracy vs length, pass@k, cost per stage
    for image in page.images:
        assert base64.b64decode(image["src"].split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")
        assert image["alt"]
    assert "52.71 / 76.70" in page.cells and "498.08" in page.cells  # accuracy and the cost total
    assert "11200 (10700), capped 2.5%" in page.cells


def test_report_without_costs_says_so_and_leaves_the_cost_plot_out():
    page = render_html(RESULTS, meta=META)
    assert len(parse(page).images) == 2 and "Costs are not included" in page
    markdown = render_markdown(RESULTS, meta=META)
    assert "Costs are not included" in markdown and "Cost per stage" not in markdown


def test_markdown_tables():
    markdown = render_markdown(RESULTS, costs=COSTS, meta=META)
    assert "## Accuracy (pass@1 / cons@64, %)" in markdown
    assert "| fathom-r1-14b | 52.71 / 76.70 | 35.26 / 56.70 |" in markdown
    assert "| fathom-r1-14b | 53.21 / 77.70 | 35.76 / 57.70 |" in markdown  # LIMO-compatible
    assert "| fathom-r1-14b | aime25 | 52.71 | 72.71 | 87.71 |" in markdown  # pass@k, k = 1, 8, 64
    assert "| total | 176.00 | 498.08 |" in markdown
    assert "| Fathom-R1-14B | 52.71 / 76.70 | 35.26 / 56.70 |" in markdown  # the published reference
    assert "- model fathom-r1-14b: s3://runs/ml/r/fathom-r1-14b/" in markdown


def test_cpu_stages_show_their_fractions_of_a_cent():
    costs = {"corpus": {"gpuHours": 0.0, "costUSD": 0.0}, "solve": {"gpuHours": 0.0, "costUSD": 0.0006}}
    markdown = render_markdown(RESULTS, costs=costs, meta=META)
    assert "| corpus | 0.00 | 0.00 |" in markdown and "| solve | 0.00 | 0.0006 |" in markdown
    assert "| total | 0.00 | 0.0006 |" in markdown


def test_report_files_are_deterministic(tmp_path):
    first = write_report(tmp_path / "a", RESULTS, costs=COSTS, meta=META)
    second = write_report(tmp_path / "b", RESULTS, costs=COSTS, meta=META)
    for kind in ("md", "html"):
        assert first[kind].read_bytes() == second[kind].read_bytes()


def test_status_results_keep_the_headline_fields_and_validate():
    results = status_results(RESULTS)
    assert results["fathom-r1-14b"]["aime25"] == {"pass@1": 52.71, "cons@k": 76.7, "k": 64, "meanTokens": 10500.0,
                                                  "samples": 1920}
    status = RecipeStatus.model_validate({"results": results, "report": "s3://runs/ml/r/eval/report.html"})
    assert status.results["fathom-r1-14b"]["hmmt25"].pass_at_1 == 35.26
    dumped = status.model_dump(by_alias=True, exclude_none=True)["results"]
    assert dumped == results


def test_eval_status_from_metrics_json():
    metrics = {"results": status_results(RESULTS), "report": "s3://runs/ml/r/eval/report.html",
               "resultsFile": "s3://runs/ml/r/eval/results.json", "samples": 7680}
    assert eval_status(metrics) == {"results": status_results(RESULTS), "report": "s3://runs/ml/r/eval/report.html"}
    assert eval_status(RESULTS, "s3://runs/ml/r/eval/")["report"] == "s3://runs/ml/r/eval/report.html"
    with pytest.raises(ValueError):
        status_results({"m": {"aime25": {"cons@k": 1.0}}})  # pass@1 is required
    with pytest.raises(ValueError):
        status_results({"m": ["not", "a", "table"]})


def test_merge_results_from_two_eval_stages():
    merged = merge_results({"a": {"aime25": {"pass@1": 1.0}}, "b": {"x": {"pass@1": 2.0}}},
                           {"a": {"hmmt25": {"pass@1": 3.0}}, "c": {"x": {"pass@1": 4.0}}})
    assert merged == {"a": {"aime25": {"pass@1": 1.0}, "hmmt25": {"pass@1": 3.0}}, "b": {"x": {"pass@1": 2.0}},
                      "c": {"x": {"pass@1": 4.0}}}


def test_report_from_status_prints_the_seeds_tables():
    status = {"phase": "Succeeded", "results": status_results(RESULTS), "report": "s3://runs/ml/r/eval/report.html",
              "stages": {"sft-curriculum": {"phase": "Succeeded", "gpuHours": 48.0, "costUSD": 135.84},
                         "eval": {"phase": "Succeeded", "gpuHours": 60.5, "costUSD": 171.22}}}
    text = report_from_status(status, title="ml/fathom-r1-14b (Succeeded)")
    lines = text.splitlines()
    assert "Accuracy, strict grading (pass@1 / cons@64, %)" in lines
    assert any(line.split()[:1] == ["fathom-r1-14b"] and "52.71 / 76.70" in line and "35.26 / 56.70" in line
               for line in lines)
    assert any(line.split() == ["fathom-r1-14b", "10500", "11900"] for line in lines)
    assert any(line.split() == ["eval", "Succeeded", "60.50", "171.22"] for line in lines)
    assert any(line.split() == ["total", "108.50", "307.06"] for line in lines)
    assert "Report: s3://runs/ml/r/eval/report.html" in lines


def test_fathom_report_store(tmp_path, capsys):
    run = tmp_path / "ml" / "fathom-r1-14b"
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "results.json").write_text(json.dumps(RESULTS))
    (run / "eval" / "costs.json").write_text(json.dumps(COSTS))
    (run / "corpus").mkdir()
    (run / "corpus" / "metrics.json").write_text(json.dumps({"kept": 100}))
    for uri in (f"file://{run}", f"file://{run}/eval/"):
        assert fathom(["report", "--store", uri]) == 0
        out = capsys.readouterr().out
        assert "52.71 / 76.70" in out and "53.21 / 77.70" in out  # strict and LIMO tables
        assert "11200 (2.5% capped)" in out
        assert any(line.split() == ["total", "176.00", "498.08"] for line in out.splitlines())
        assert "Stages in the store: corpus, eval" in out


def test_fathom_report_needs_one_source(capsys):
    assert fathom(["report"]) == 2
    assert "give a recipe NAME or --store URI" in capsys.readouterr().err
    assert fathom(["report", "x", "--store", "file:///tmp"]) == 2


def test_fathom_report_name_reads_the_recipe_status(monkeypatch, capsys):
    from fathom_operator import results

    status = {"phase": "Running", "results": status_results(RESULTS),
              "stages": {"sft-shortest": {"phase": "Running", "gpuHours": 128.0, "costUSD": 362.24}}}
    asked = []

    def read_recipe(name, namespace):
        asked.append((name, namespace))
        return {"metadata": {"name": name}, "status": status}, namespace or "default"

    monkeypatch.setattr(results, "read_recipe", read_recipe)
    assert fathom(["report", "fathom-r1-14b", "-n", "ml"]) == 0
    out = capsys.readouterr().out
    assert asked == [("fathom-r1-14b", "ml")]
    assert out.startswith("ml/fathom-r1-14b (Running)")
    assert any(line.split() == ["sft-shortest", "Running", "128.00", "362.24"] for line in out.splitlines())
