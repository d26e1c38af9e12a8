"""merge: the linear merge equals the weighted average of its inputs (in one shard or many), the check
catches a bad result and mismatched inputs, and the CLI commits a bf16 model with tokenizer and chat
template."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from fathom_jobs.errors import StageInputError
from fathom_jobs.inputs import store_for
from fathom_jobs.specs import MergeParams
from fathom_jobs.stages import merge
from tests.support.jobs_helpers import file_uri, make_job, run_cli


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FATHOM_CACHE_DIR", str(tmp_path / "cache"))


def checkpoint(tmp_path, tiny_model_dir, name: str, seed: int, edit=None):
    """A copy of the tiny model with its weights moved at random (a stand-in for a fine-tuned one)."""
    target = tmp_path / name
    shutil.copytree(tiny_model_dir, target)
    weights = load_file(str(target / "model.safetensors"))
    generator = torch.Generator().manual_seed(seed)
    moved = {k: v + 0.01 * torch.randn(v.shape, generator=generator) for k, v in weights.items()}
    if edit:
        edit(moved)
    save_file(moved, str(target / "model.safetensors"), metadata={"format": "pt"})
    return target


def merge_job(tmp_path, models, output="merged", **params):
    return make_job("merge", {"models": [{"model": file_uri(path), "weight": w} for path, w in models], **params},
                    file_uri(tmp_path / "store" / output))


def test_merge_equals_the_weighted_average(tmp_path, tiny_model_dir):
    a = checkpoint(tmp_path, tiny_model_dir, "a", seed=1)
    b = checkpoint(tmp_path, tiny_model_dir, "b", seed=2)
    job = merge_job(tmp_path, [(a, 0.3), (b, 0.9)], dtype="float32")
    merge.run(job)
    merged = load_file(str(tmp_path / "store" / "merged" / "model.safetensors"))
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert set(merged) == set(wa)
    for name, tensor in merged.items():
        assert tensor.dtype == torch.float32
        torch.testing.assert_close(tensor, (0.3 * wa[name] + 0.9 * wb[name]) / 1.2, rtol=1e-6, atol=1e-7)
    metrics = store_for(job.output).read_json("metrics.json")
    assert [m["appliedWeight"] for m in metrics["models"]] == pytest.approx([0.25, 0.75])
    assert metrics["tensors"] == len(wa) and metrics["maxAbsError"] < 1e-6


def test_the_check_catches_a_result_that_is_not_the_average(tmp_path, tiny_model_dir):
    a = checkpoint(tmp_path, tiny_model_dir, "a", seed=1)
    b = checkpoint(tmp_path, tiny_model_dir, "b", seed=2)
    params = MergeParams.model_validate({"models": [{"model": "a", "weight": 1}, {"model": "b", "weight": 1}]})
    out = tmp_path / "out"
    merge.merge_models([a, b], params, out)
    expected = merge.check_inputs([a, b], ["a", "b"])
    assert merge.verify_merge(out, [a, b], [0.5, 0.5], "bfloat16", expected)["tensors"] == len(expected)
    tampered = load_file(str(out / "model.safetensors"))
    tampered["model.norm.weight"][0] += 0.05
    save_file(tampered, str(out / "model.safetensors"))
    with pytest.raises(RuntimeError, match="model.norm.weight is not the weighted average"):
        merge.verify_merge(out, [a, b], [0.5, 0.5], "bfloat16", expected)


def test_inputs_that_do_not_line_up_are_refused(tmp_path, tiny_model_dir):
    a = checkpoint(tmp_path, tiny_model_dir, "a", seed=1)
    narrow = checkpoint(tmp_path, tiny_model_dir, "narrow", seed=2,
                        edit=lambda w: w.update({"model.norm.weight": w["model.norm.weight"][:32]}))
    with pytest.raises(StageInputError, match="model.norm.weight has shape"):
        merge.check_inputs([a, narrow], ["a", "narrow"])
    other_vocab = checkpoint(tmp_path, tiny_model_dir, "vocab", seed=3)
    tokenizer = json.loads((other_vocab / "tokenizer.json").read_text())
    first = next(iter(tokenizer["model"]["vocab"]))
    tokenizer["model"]["vocab"][first + "x"] = tokenizer["model"]["vocab"].pop(first)
    (other_vocab / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(StageInputError, match="another tokenizer vocabulary"):
        merge.check_inputs([a, other_vocab], ["a", "vocab"])
    with pytest.raises(StageInputError, match="sum to 0"):
        merge.normalized_weights(MergeParams.model_validate(
            {"models": [{"model": "a", "weight": 1}, {"model": "b", "weight": -1}]}))


@pytest.mark.slow
def test_merge_through_the_cli_commits_bf16_with_tokenizer_and_chat_template(tmp_path, tiny_model_dir):
    a = checkpoint(tmp_path, tiny_model_dir, "a", seed=1)
    b = checkpoint(tmp_path, tiny_model_dir, "b", seed=2)
    job = merge_job(tmp_path, [(a, 0.5), (b, 0.25)], normalize=False)
    result = run_cli(job, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    store = store_for(job.output)
    files = set(store.read_manifest().files)
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} <= files
    local = tmp_path / "fetched"
    store.download_dir("", local)
    assert (local / "chat_template.jinja").read_text() == (tiny_model_dir / "chat_template.jinja").read_text()
    assert json.loads((local / "config.json").read_text())["dtype"] == "bfloat16"
    merged = load_file(str(local / "model.safetensors"))
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    for name, tensor in merged.items():
        assert tensor.dtype == torch.bfloat16
        assert torch.equal(tensor, (0.5 * wa[name] + 0.25 * wb[name]).to(torch.bfloat16))


def test_a_merge_written_in_many_shards_loads_as_one_model(tmp_path, tiny_model_dir, monkeypatch):
    # Real merges write 512 MB shards while the next ones are merged; here shards of 64 KB.
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(merge, "OUT_SHARD_BYTES", 64 * 1024)
    a = checkpoint(tmp_path, tiny_model_dir, "a", seed=1)
    b = checkpoint(tmp_path, tiny_model_dir, "b", seed=2)
    params = MergeParams.model_validate({"models": [{"model": "a", "weight": 1}, {"model": "b", "weight": 3}],
                                         "dtype": "float32"})
    out = tmp_path / "out"
    merge.merge_models([a, b], params, out)
    shards = sorted(out.glob("*.safetensors"))
    assert len(shards) > 3 and (out / "model.safetensors.index.json").exists()
    assert merge.verify_merge(out, [a, b], [0.25, 0.75], "float32", merge.check_inputs([a, b], ["a", "b"]))
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    loaded = model.state_dict()
    assert set(wa) <= set(loaded)
    for name in wa:
        torch.testing.assert_close(loaded[name], 0.25 * wa[name] + 0.75 * wb[name], rtol=1e-6, atol=1e-7)
