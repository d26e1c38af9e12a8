"""status.forecast and `budgetPolicy: forecast`, with the real operator against kmock."""

from __future__ import annotations

import json

import pytest

from tests.support.operator_harness import (
    T0,
    Cluster,
    JobController,
    apply,
    operator,
    small_recipe,
    stage_phase,
    status,
    until,
)

pytestmark = [pytest.mark.kmock(cls=Cluster), pytest.mark.asyncio, pytest.mark.timeout(60)]

# DeepSeek-R1-Distill-Qwen-14B's shape: small_recipe's hf://org/base is unknown to the forecast.
QWEN_14B = {"layers": 48, "hiddenSize": 5120, "attentionHeads": 40, "kvHeads": 8, "vocabSize": 152064,
            "intermediateSize": 13824}


def forecast(cluster) -> dict:
    return status(cluster, "ml", "r").get("forecast") or {}


async def test_the_forecast_is_on_the_status_from_the_start_and_sharpens_when_a_stage_finishes(
        cluster, clock, config, tmp_path):
    ctl = JobController(cluster)
    async with operator(config):
        await apply(cluster, small_recipe(modelInfo=QWEN_14B))
        await until(lambda: "r-corpus-0" in ctl.jobs(), what="the first Job")
        await until(lambda: forecast(cluster), what="status.forecast")
        first = forecast(cluster)
        assert set(first["stages"]) == {"corpus", "solve", "chains", "sft"}
        assert {s["basis"] for s in first["stages"].values()} == {"forecast"}
        assert first["stages"]["solve"]["gpuHours"] > 0 and first["stages"]["sft"]["gpuHours"] > 0
        assert first["usd"] == pytest.approx(sum(s["usd"] for s in first["stages"].values()), abs=0.02)
        assert first["display"] == f"${first['usd']:.2f}"
        # The corpus stage finds 14 problems, not the ~100K the forecast assumed before anything ran.
        out = tmp_path / "store" / "runs" / "ml" / "r" / "corpus"
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps({"kept": 14, "read": 30}))
        await ctl.run("r-corpus-0", T0, 1, clock)
        await until(lambda: forecast(cluster).get("stages", {}).get("corpus", {}).get("basis") == "spent",
                    what="corpus at its cost")
        await until(lambda: forecast(cluster)["stages"]["solve"]["basis"] == "measured", what="solve re-forecast")
        after = forecast(cluster)
    assert after["stages"]["corpus"]["usd"] == status(cluster, "ml", "r")["stages"]["corpus"]["costUSD"]
    assert after["stages"]["solve"]["usd"] < first["stages"]["solve"]["usd"] / 100  # 14 problems, not 100,000
    assert after["usd"] < first["usd"]
    assert after["remainingUSD"] == pytest.approx(after["usd"] - status(cluster, "ml", "r")["cost"]["usd"], abs=0.02)


async def test_budget_policy_forecast_holds_a_stage_whose_forecast_would_pass_the_budget(cluster, clock, config):
    ctl = JobController(cluster)
    async with operator(config):
        # ~100K problems x 8 samples on 2 x 8 H100s: far more than $50.
        await apply(cluster, small_recipe(modelInfo=QWEN_14B, budgetUSD=50, budgetPolicy="forecast"))
        await ctl.run("r-corpus-0", T0, 1, clock)
        await until(lambda: stage_phase(cluster, "solve") == "Pending"
                    and "forecast" in (status(cluster, "ml", "r")["stages"]["solve"].get("message") or ""),
                    what="solve held by its forecast")
        await until(lambda: status(cluster, "ml", "r").get("phase") == "Failed", what="phase Failed")
    assert "r-solve-0" not in ctl.jobs()
    st = status(cluster, "ml", "r")
    solve_usd = st["forecast"]["stages"]["solve"]["usd"]
    spent = st["cost"]["usd"]
    assert spent == 0.2  # corpus: 1 h x 4 CPUs x $0.05
    assert st["stages"]["solve"]["message"] == (
        f"held: spent $0.20 + this stage's forecast ${solve_usd:,.2f} = ${solve_usd + spent:,.2f} "
        "would pass the budget $50.00")
    exceeded = next(c for c in st["conditions"] if c["type"] == "BudgetExceeded")
    assert (exceeded["status"], exceeded["reason"]) == ("True", "ForecastOverBudget")
    assert f"${solve_usd:,.2f}" in exceeded["message"]
    failed = next(c for c in st["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "ForecastOverBudget"


async def test_without_the_forecast_policy_the_same_recipe_starts_the_stage(cluster, clock, config):
    ctl = JobController(cluster)
    async with operator(config):
        await apply(cluster, small_recipe(modelInfo=QWEN_14B, budgetUSD=50))
        await ctl.run("r-corpus-0", T0, 1, clock)
        await until(lambda: "r-solve-0" in ctl.jobs(), what="solve starts (budget not yet spent)")
