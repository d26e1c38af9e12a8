"""grpo: the reward on hand-made completions, 3 steps with the real reward through the CLI, and a
resume from the operator's checkpoint that continues the step count and the prompt order."""

from __future__ import annotations

import pytest

from fathom_jobs.datasets import PROBLEMS, PROMPTS, write_dataset
from fathom_jobs.errors import StageInputError
from fathom_jobs.grading import Grader
from fathom_jobs.inputs import store_for
from fathom_jobs.specs import SEED_SYSTEM_PROMPT, GrpoParams
from fathom_jobs.stages import grpo
from fathom_jobs.store import latest_checkpoint
from tests.support.jobs_helpers import file_uri, make_job, run_cli

EOS = 1


def prompt(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SEED_SYSTEM_PROMPT}, {"role": "user", "content": question}]


PROMPT_ROWS = [{"id": f"p{i}", "prompt": prompt(f"What is {i} + 1?"), "answer": str(i + 1), "difficulty": 3,
                "solve_rate": 0.25} for i in range(4)]


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FATHOM_CACHE_DIR", str(tmp_path / "cache"))


def prompts_uri(tmp_path) -> str:
    uri = file_uri(tmp_path / "store" / "rl-set")
    write_dataset(store_for(uri), PROMPT_ROWS, PROMPTS, fingerprint="rl")
    return uri


def grpo_job(tmp_path, model_dir, output="grpo", **params):
    defaults = {"model": file_uri(model_dir), "data": prompts_uri(tmp_path), "maxCompletionTokens": 12,
                "numGenerations": 4, "perDeviceBatchSize": 4, "gradientAccumulationSteps": 1, "maxSteps": 3,
                "useVllm": False, "deepspeed": "none", "gradientCheckpointing": True, "saveSteps": 2,
                "temperature": 1.0}
    return make_job("grpo", {**defaults, **params}, file_uri(tmp_path / "store" / output))


def reply(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def test_reward_on_hand_made_completions():
    question = prompt("What is 2 + 2?")
    completions = [reply("2 plus 2 is 4.</think>\n\n$\\boxed{4}$"),
                   reply("Two and two. Counting: one, two, three, four. So 4.</think>\n\n$\\boxed{4}$"),
                   reply("</think>$\\boxed{5}$"),
                   reply("It is 4.</think>\n\n$\\boxed{4}$")]  # right answer, but cut at the cap
    completion_ids = [[7] * 9 + [EOS], [7] * 29 + [EOS], [7] * 4 + [EOS], [7] * 40]
    with Grader("strict") as grader:
        reward = grpo.CorrectAndShortReward(grader, [EOS], kind="kimi", weight=0.5)
        logged = {}
        rewards = reward(prompts=[question] * 4, completions=completions, completion_ids=completion_ids,
                         answer=["4"] * 4, log_metric=logged.__setitem__, trainer_state=None)
    correct_short, correct_long, wrong, capped = rewards
    assert correct_short == 1.25 and correct_long == 0.75
    assert correct_short > correct_long > wrong == 0.0 and capped == 0.0
    assert logged == {"accuracy": 0.5, "capped": 0.25}


def test_rows_from_prompts_or_problems():
    rows = grpo.rl_rows([{"id": "q", "problem": "What is 1+1?", "answer": 2}, {"id": "r", "problem": "x", "answer": ""}],
                        "Be brief.")
    assert rows == [{"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 1+1?"}],
                     "answer": "2", "id": "q"}]
    with pytest.raises(StageInputError, match="no prompt has a reference answer"):
        grpo.rl_rows([{"id": "q", "problem": "x", "answer": None}], "s")


def test_a_step_must_hold_whole_groups():
    params = GrpoParams.model_validate({"data": "x", "numGenerations": 8, "perDeviceBatchSize": 1,
                                        "gradientAccumulationSteps": 4})
    with pytest.raises(StageInputError, match="not a multiple of numGenerations = 8"):
        grpo.check_group_layout(params, world_size=1)
    grpo.check_group_layout(params, world_size=2)  # 1 x 2 GPUs x 4 = 8


@pytest.mark.slow
def test_grpo_three_steps_through_the_cli(tmp_path, tiny_model_dir):
    job = grpo_job(tmp_path, tiny_model_dir)
    result = run_cli(job, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    store = store_for(job.output)
    manifest = store.read_manifest()
    assert {"model.safetensors", "tokenizer.json", "chat_template.jinja"} <= set(manifest.files)
    metrics = store.read_json("metrics.json")
    assert metrics["steps"] == 3 and metrics["prompts"] == 4 and metrics["tokensSeen"] > 0
    assert [point["step"] for point in metrics["rewardCurve"]] == [1, 2, 3]
    assert metrics["reward"]["mean"] >= 0 and "accuracy" in metrics
    assert metrics["cappedFraction"]["mean"] <= 1.0
    assert latest_checkpoint(store)[0] == 2  # saveSteps 2; the last step is the final model, not a checkpoint
    assert store.read_json("progress.json")["step"] == 3
    assert any("tfevents" in key for key in store.list("logs/attempt-0"))  # TensorBoard, the default reportTo


class Recorded(grpo.CorrectAndShortReward):
    calls: list = []

    def __call__(self, prompts, completions, completion_ids, answer, trainer_state=None, **rest):
        Recorded.calls.append((trainer_state.global_step, [p[-1]["content"] for p in prompts],
                               [list(ids) for ids in completion_ids]))
        return super().__call__(prompts, completions, completion_ids, answer, **rest)


def test_resume_from_the_operators_checkpoint_continues_steps_and_prompts(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(grpo, "CorrectAndShortReward", Recorded)
    Recorded.calls = []
    first = grpo_job(tmp_path, tiny_model_dir, output="first")
    grpo.run(first)
    uninterrupted = list(Recorded.calls)
    assert [step for step, _, _ in uninterrupted] == [0, 1, 2]

    Recorded.calls = []
    checkpoint = store_for(first.output).uri_of("checkpoints/step-2")
    second = grpo_job(tmp_path, tiny_model_dir, output="second")
    second = second.model_copy(update={"resume_from": checkpoint, "attempt": 1})
    grpo.run(second)
    assert Recorded.calls == uninterrupted[2:]  # step 3: same prompts, same sampled completions
    metrics = store_for(second.output).read_json("metrics.json")
    assert metrics["resumedFromStep"] == 2 and metrics["steps"] == 3


def test_problems_without_answers_are_an_input_error(tmp_path, tiny_model_dir):
    uri = file_uri(tmp_path / "store" / "problems")
    write_dataset(store_for(uri), [{"id": "a", "problem": "1+1?", "answer": "", "solution": None, "source": "t"}],
                  PROBLEMS, fingerprint="p")
    with pytest.raises(StageInputError, match="no prompt has a reference answer to reward against"):
        grpo.run(grpo_job(tmp_path, tiny_model_dir, data=uri))
