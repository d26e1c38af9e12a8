"""sft: reasoning kept in the loss, curriculum order in the batches, exact resume, DeepSpeed ZeRO-2/3,
the final bf16 model in the store, and the torchrun command line — on the tiny model."""

from __future__ import annotations

import json
import os
import socket
from itertools import accumulate
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fathom_jobs.datasets import CHAINS, write_dataset
from fathom_jobs.inputs import store_for
from fathom_jobs.specs import SEED_SYSTEM_PROMPT, SftParams
from fathom_jobs.stages import sft
from fathom_jobs.store import latest_checkpoint
from tests.support.jobs_helpers import file_uri, make_job, run_cli

REASONING = "Add {i} and {i}: ten plus {i} is {s}, so the sum is {s}."


def chain_row(i: int, position: int) -> dict:
    reasoning = REASONING.format(i=i, s=2 * i) + " Check it again." * (i % 3)  # unequal lengths
    return {"id": f"c{i}", "answer": str(2 * i), "difficulty": i, "solve_rate": 0.5, "position": position,
            "prompt": [{"role": "system", "content": SEED_SYSTEM_PROMPT}, {"role": "user", "content": f"What is {i}+{i}?"}],
            "completion": [{"role": "assistant",
                            "content": f"<think>\n{reasoning}\n</think>\n\nThe final answer is $\\boxed{{{2 * i}}}$."}]}


# Stored out of order: `position` (easy -> hard) decides, c5 first.
CHAINS_ROWS = [chain_row(i, position=5 - i) for i in range(6)]


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FATHOM_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def chains_uri(tmp_path) -> str:
    uri = file_uri(tmp_path / "store" / "chains")
    write_dataset(store_for(uri), CHAINS_ROWS, CHAINS, fingerprint="chains")
    return uri


def sft_job(tmp_path, model_dir, output="sft", **params):
    defaults = {"model": file_uri(model_dir), "data": chains_uri(tmp_path), "maxLength": 128, "maxSteps": 5,
                "deepspeed": "none", "gradientAccumulationSteps": 1, "saveSteps": 2, "gradientCheckpointing": True,
                "learningRate": 1e-3}
    return make_job("sft", {**defaults, **params}, file_uri(tmp_path / "store" / output))


# ----------------------------------------------------------------------------------- labels
def test_reasoning_tokens_carry_labels_and_the_prompt_does_not(tokenizer):
    row = CHAINS_ROWS[3]
    example = sft.tokenize_chain(tokenizer, row["prompt"], row["completion"], max_length=512)
    ids, labels = example["input_ids"], example["labels"]
    trained = [t for t, label in zip(ids, labels) if label != -100]
    masked = [t for t, label in zip(ids, labels) if label == -100]
    assert trained == labels[len(masked):] and all(label == -100 for label in labels[:len(masked)])
    assert REASONING.format(i=3, s=6) in tokenizer.decode(trained)
    assert tokenizer.decode(trained).endswith("</think>\n\nThe final answer is $\\boxed{6}$." + tokenizer.eos_token)
    # The prompt is exactly what generation starts from (the template's generation prompt opens <think>).
    generation_prompt = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    assert tokenizer.decode(masked) == generation_prompt and generation_prompt.endswith("<think>\n")
    # Why the chains are not rendered through the template: it drops the reasoning.
    rendered = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
    assert "ten plus" not in rendered


def test_chains_cut_to_max_length_and_empty_ones_dropped(tokenizer):
    row = CHAINS_ROWS[2]
    full = sft.tokenize_chain(tokenizer, row["prompt"], row["completion"], max_length=10_000)
    prompt_tokens = full["labels"].count(-100)
    cut = sft.tokenize_chain(tokenizer, row["prompt"], row["completion"], max_length=prompt_tokens + 3)
    assert len(cut["input_ids"]) == prompt_tokens + 3 and cut["labels"][-3:] == full["labels"][prompt_tokens:prompt_tokens + 3]
    assert sft.tokenize_chain(tokenizer, row["prompt"], row["completion"], max_length=prompt_tokens) is None


def test_packing_keeps_order_and_fills_blocks():
    examples = [{"input_ids": [n] * size, "labels": [n] * size, "id": str(n)} for n, size in enumerate([5, 3, 4, 9, 1])]
    blocks = sft.pack_in_order(examples, max_length=9)
    assert [b["ids"] for b in blocks] == [["0", "1"], ["2"], ["3"], ["4"]]
    assert [b["seq_lengths"] for b in blocks] == [[5, 3], [4], [9], [1]]
    assert sum((b["input_ids"] for b in blocks), []) == sum((e["input_ids"] for e in examples), [])


# ------------------------------------------------------------------------------ curriculum order
def test_batches_follow_the_curriculum_for_every_pass(tmp_path, tiny_model_dir, tokenizer):
    params = SftParams.model_validate({"data": "x", "maxLength": 128, "passes": 2, "perDeviceBatchSize": 2,
                                       "deepspeed": "none", "gradientAccumulationSteps": 1})
    examples, stats = sft.training_examples(CHAINS_ROWS, tokenizer, params)
    assert stats["chains"] == 6 and stats["sequences"] == 12
    expected_ids = [f"c{i}" for i in (5, 4, 3, 2, 1, 0)] * 2
    assert sum((e["ids"] for e in examples), []) == expected_ids
    trainer = sft.build_trainer(params, tiny_model_dir, tokenizer, examples, sft.sft_config(params, tmp_path / "t"))
    assert isinstance(trainer._get_train_sampler(), torch.utils.data.SequentialSampler)
    seen = torch.cat([batch["input_ids"][0] for batch in trainer.get_train_dataloader()]).tolist()
    rows = {r["id"]: r for r in CHAINS_ROWS}
    ordered = [sft.tokenize_chain(tokenizer, rows[i]["prompt"], rows[i]["completion"], 128)["input_ids"]
               for i in expected_ids]
    assert seen == sum(ordered, [])


# ------------------------------------------------------------------------------------ attention
def test_a_packed_stage_on_a_gpu_loads_the_varlen_kernel_or_stops(tmp_path, tiny_model_dir, tokenizer, monkeypatch):
    from transformers import AutoModelForCausalLM

    from fathom_jobs import training
    from fathom_jobs.errors import StageInputError

    params = SftParams.model_validate({"data": "x", "maxLength": 128, "deepspeed": "none",
                                       "gradientAccumulationSteps": 1})
    unpacked = params.model_copy(update={"packing": False})
    examples, _ = sft.training_examples(CHAINS_ROWS, tokenizer, params)
    padded, _ = sft.training_examples(CHAINS_ROWS, tokenizer, unpacked)
    # CPU arguments: only the model load is told of a GPU.
    args, padded_args = sft.sft_config(params, tmp_path / "t"), sft.sft_config(unpacked, tmp_path / "u")
    loaded: list[dict] = []
    real_load = AutoModelForCausalLM.from_pretrained

    def from_pretrained(path, **kwargs):
        loaded.append(kwargs)
        return real_load(path, dtype=torch.float32, attn_implementation="sdpa")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", from_pretrained)
    monkeypatch.setattr(training, "has_gpu", lambda: True)
    monkeypatch.setattr(training, "flash_attn_available", lambda: True)
    sft.build_trainer(params, tiny_model_dir, tokenizer, examples, args)
    assert loaded[-1]["attn_implementation"] == "flash_attention_2"

    # No flash-attn on a GPU: a packed stage stops with one line instead of a dense 16k x 16k mask...
    monkeypatch.setattr(training, "flash_attn_available", lambda: False)
    with pytest.raises(StageInputError, match="packing on a GPU needs the flash-attn package"):
        sft.build_trainer(params, tiny_model_dir, tokenizer, examples, args)
    job = sft_job(tmp_path, tiny_model_dir)
    with pytest.raises(StageInputError, match="packing on a GPU needs the flash-attn package"):
        sft.run(job)  # the stage stops before it fetches or trains anything
    assert not training.work_dir(job).exists()
    # ...while padded (unpacked) batches need no varlen kernel.
    sft.build_trainer(unpacked, tiny_model_dir, tokenizer, padded, padded_args)
    assert loaded[-1]["attn_implementation"] == "sdpa"
    # And the CPU path (tests, demo) is sdpa.
    monkeypatch.setattr(training, "has_gpu", lambda: False)
    assert training.model_load_kwargs(params, packed=True)["attn_implementation"] == "sdpa"


def test_packed_batches_reach_the_varlen_kernel_with_chain_boundaries_and_no_mask(tmp_path, tiny_model_dir, tokenizer,
                                                                                 monkeypatch):
    """The GPU path on a CPU: transformers' own flash_attention_2 code with a reference varlen kernel
    (per-chain sdpa) in place of flash-attn's CUDA one."""
    import torch.nn.functional as F
    from transformers import modeling_flash_attention_utils as flash_utils
    from transformers.masking_utils import create_causal_mask

    params = SftParams.model_validate({"data": "x", "maxLength": 320, "deepspeed": "none",
                                       "gradientAccumulationSteps": 1})
    examples, _ = sft.training_examples(CHAINS_ROWS, tokenizer, params)
    trainer = sft.build_trainer(params, tiny_model_dir, tokenizer, examples, sft.sft_config(params, tmp_path / "t"))
    batch = next(iter(trainer.get_train_dataloader()))
    lengths = examples[0]["seq_lengths"]
    assert len(lengths) >= 2  # several chains in the first block
    boundaries = [0, *accumulate(lengths)]
    # What TRL's padding-free collator hands the model: no mask, positions restarting at every chain.
    assert "attention_mask" not in batch
    assert batch["position_ids"][0].tolist() == sum((list(range(n)) for n in lengths), [])
    assert batch["cu_seq_lens_q"].tolist() == boundaries and batch["max_length_q"] == max(lengths)

    model = trainer.model.eval()
    embeds = torch.zeros(1, boundaries[-1], model.config.hidden_size)
    mask_args = {"inputs_embeds": embeds, "attention_mask": None, "past_key_values": None,
                 "position_ids": batch["position_ids"]}
    dense = create_causal_mask(config=model.config, **mask_args)  # sdpa: the block-diagonal L x L mask
    assert dense.shape == (1, 1, boundaries[-1], boundaries[-1])

    calls = []

    def varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale=None, causal=False):
        calls.append(cu_seqlens_q.tolist())
        out = torch.empty_like(q)
        cuts = cu_seqlens_q.tolist()
        for start, end in zip(cuts[:-1], cuts[1:]):
            head_first = [t[start:end].transpose(0, 1)[None] for t in (q, k, v)]
            out[start:end] = F.scaled_dot_product_attention(*head_first, is_causal=causal, scale=softmax_scale,
                                                            enable_gqa=True)[0].transpose(0, 1)
        return out

    for name in ("_loaded_implementation", "_flash_fn", "_flash_varlen_fn", "_flash_with_kvcache_fn", "_pad_fn",
                 "_unpad_fn", "_process_flash_kwargs_fn"):
        monkeypatch.setattr(flash_utils, name, getattr(flash_utils, name))  # restored after the test
    monkeypatch.setattr(flash_utils, "_loaded_implementation", None)
    monkeypatch.setattr(flash_utils, "_lazy_imports", lambda *a, **k: (None, varlen, None, flash_utils._pad_input,
                                                                        flash_utils._unpad_input))
    with torch.no_grad():
        dense_loss = model(**batch).loss
        crossed_loss = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss  # chains see each other
        monkeypatch.setattr(model.config, "_attn_implementation", "flash_attention_2")
        assert create_causal_mask(config=model.config, **mask_args) is None  # no dense mask at all
        varlen_loss = model(**batch).loss
    assert calls == [boundaries] * model.config.num_hidden_layers  # every layer got the chains' boundaries
    assert torch.allclose(varlen_loss, dense_loss, atol=1e-5)  # the same attention as the block-diagonal mask
    assert not torch.allclose(crossed_loss, dense_loss, atol=1e-3)  # which the boundaries do change


# ------------------------------------------------------------------------------ train + resume
class Killed(Exception):
    pass


BUILD_TRAINER = sft.build_trainer  # the real one, whatever a test patched in


def recording(monkeypatch, kill_at_step=None):
    """Wrap sft.build_trainer: record each step's batch and starting step; die after a checkpoint."""
    from transformers import TrainerCallback

    record = {"batches": [], "steps": []}

    class KillAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == kill_at_step:
                raise Killed

    def build(*args, **kwargs):
        trainer = BUILD_TRAINER(*args, **kwargs)
        step = trainer.training_step

        def training_step(model, inputs, *rest, **more):
            record["batches"].append(inputs["input_ids"].clone())
            record["steps"].append(trainer.state.global_step)
            return step(model, inputs, *rest, **more)

        trainer.training_step = training_step
        trainer.add_callback(KillAfterSave())  # after StoreCheckpoints: the checkpoint is uploaded first
        return trainer

    monkeypatch.setattr(sft, "build_trainer", build)
    return record


def tensorboard_scalars(store, prefix: str, tag: str, tmp_path) -> dict[int, float]:
    """step -> value of one TensorBoard scalar, read from the event files under prefix in the store."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    local = tmp_path / "tb"
    for key in store.list(prefix):
        store.download_file(key, local / key)
    accumulator = EventAccumulator(str(local / prefix))
    accumulator.Reload()
    return {event.step: event.value for event in accumulator.Scalars(tag)}


def test_sft_trains_and_commits_a_bf16_model_with_its_chat_template(tmp_path, tiny_model_dir):
    from fathom_jobs import training

    job = sft_job(tmp_path, tiny_model_dir, maxSteps=5)
    sft.run(job)
    store = store_for(job.output)
    manifest = store.read_manifest()
    assert manifest is not None and {"model.safetensors", "config.json", "tokenizer.json",
                                     "chat_template.jinja"} <= set(manifest.files)
    assert not any(path.startswith("logs/") for path in manifest.files)  # the logs sit beside the model
    local = tmp_path / "final"
    store.download_dir("", local)
    weights = load_file(str(local / "model.safetensors"))
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    assert {k: v.shape for k, v in weights.items()} == {k: v.shape for k, v in base.items()}
    assert all(t.dtype == torch.bfloat16 for t in weights.values())
    assert any(not torch.equal(weights[k], base[k].to(torch.bfloat16)) for k in base)  # it trained
    assert json.loads((local / "config.json").read_text())["dtype"] == "bfloat16"
    assert "</think>" in (local / "chat_template.jinja").read_text()
    metrics = store.read_json("metrics.json")
    assert metrics["steps"] == 5 and metrics["tokensSeen"] > 0 and metrics["trainLoss"] > 0
    progress = store.read_json("progress.json")
    assert progress["step"] == 5 and progress["total"] == 5 and progress["loss"] > 0 and progress["tokensPerSecond"] > 0
    committed = sorted(k.split("/")[1] for k in store.list("checkpoints") if k.endswith("_MANIFEST.json"))
    assert committed == ["step-2", "step-4"]  # every 2 steps; the last step is the final model, not a checkpoint
    assert not list((training.work_dir(job) / "trainer").glob("checkpoint-*"))  # local copies gone once uploaded
    # TensorBoard (the default reportTo): every step's loss, in the store under logs/attempt-<N>/
    losses = tensorboard_scalars(store, "logs/attempt-0", "train/loss", tmp_path)
    assert sorted(losses) == [1, 2, 3, 4, 5] and losses[5] == pytest.approx(metrics["finalLoss"], rel=1e-4)
    sft.run(job)  # memoized: the same inputs are not trained again
    assert store.read_manifest().created == manifest.created


def test_killed_run_resumes_at_the_same_step_and_data_position(tmp_path, tiny_model_dir, monkeypatch):
    params = {"maxSteps": 4, "saveSteps": 2, "passes": 2, "keepCheckpoints": 1}
    uninterrupted = recording(monkeypatch)
    sft.run(sft_job(tmp_path / "a", tiny_model_dir, **params))

    interrupted = recording(monkeypatch, kill_at_step=2)
    job = sft_job(tmp_path / "b", tiny_model_dir, **params)
    with pytest.raises(Killed):
        sft.run(job)
    store = store_for(job.output)
    assert latest_checkpoint(store)[0] == 2 and store.read_manifest() is None
    assert len(interrupted["batches"]) == 2

    resumed = recording(monkeypatch)
    sft.run(job)  # a new attempt: finds its own step-2 checkpoint
    assert resumed["steps"] == [2, 3]
    for got, want in zip(resumed["batches"], uninterrupted["batches"][2:], strict=True):
        assert torch.equal(got, want)
    assert store.read_json("metrics.json")["resumedFromStep"] == 2
    assert store.read_json("metrics.json")["steps"] == 4
    a = load_file(str(tmp_path / "a" / "store" / "sft" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "store" / "sft" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [k.split("/")[1] for k in store.list("checkpoints") if k.endswith("_MANIFEST.json")] == ["step-2"]


# ---------------------------------------------------------------------------------- DeepSpeed
@pytest.mark.slow
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_deepspeed_single_process_through_the_cli(tmp_path, tiny_model_dir, stage):
    job = sft_job(tmp_path, tiny_model_dir, deepspeed=stage, maxSteps=5, saveSteps=3)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
           "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(tmp_path / "torch_extensions"))}
    result = run_cli(job, tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    store = store_for(job.output)
    assert store.read_json("metrics.json")["steps"] == 5
    assert latest_checkpoint(store)[0] == 3  # none at the last step: the final model is saved once
    checkpoint = store.read_manifest("checkpoints/step-3").files
    assert any(path.startswith("global_step3/") for path in checkpoint)  # DeepSpeed's optimizer shards
    weights = load_file(str(tmp_path / "store" / "sft" / "model.safetensors"))
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    assert {k: v.shape for k, v in weights.items()} == {k: v.shape for k, v in base.items()}
    assert all(t.dtype == torch.bfloat16 for t in weights.values())


# ------------------------------------------------------------------------------------- launching
def launcher_job(nodes=1, gpus=8):
    return make_job("sft", {"data": "s3://b/d"}, "s3://b/out", nodes=nodes, gpus_per_node=gpus)


def test_single_gpu_or_cpu_stages_train_in_process():
    from fathom_jobs.launch import launch_command

    assert launch_command(launcher_job(gpus=1), {}) is None
    assert launch_command(launcher_job(gpus=0), {}) is None
    assert launch_command(launcher_job(gpus=8), {"LOCAL_RANK": "3", "WORLD_SIZE": "8"}) is None  # a worker


def test_one_node_runs_torchrun_standalone():
    from fathom_jobs.launch import launch_command

    assert launch_command(launcher_job(gpus=8), {}, python="py") == [
        "py", "-m", "torch.distributed.run", "--nproc_per_node=8", "--standalone", "--max_restarts=0",
        "-m", "fathom_jobs", "sft"]


def test_multi_node_takes_the_world_from_the_operator_environment():
    from fathom_jobs.launch import launch_command

    env = {"NNODES": "2", "NPROC_PER_NODE": "8", "MASTER_ADDR": "r-sft-0.r-sft", "MASTER_PORT": "29500", "NODE_RANK": "1"}
    assert launch_command(launcher_job(nodes=2, gpus=8), env, python="py") == [
        "py", "-m", "torch.distributed.run", "--nproc_per_node=8", "--nnodes=2", "--node_rank=1",
        "--master_addr=r-sft-0.r-sft", "--master_port=29500", "--max_restarts=0", "-m", "fathom_jobs", "sft"]


def test_liger_without_the_package_is_an_input_error(tmp_path, tiny_model_dir):
    import importlib.util

    from fathom_jobs.errors import StageInputError

    if importlib.util.find_spec("liger_kernel") is not None:
        pytest.skip("liger-kernel is installed here")
    with pytest.raises(StageInputError, match="liger-kernel"):
        sft.run(sft_job(tmp_path, tiny_model_dir, liger=True))


# ------------------------------------------------------------------------- multi-node checkpoints
def _node_process(rank: int, port: int, store_uri: str, local_root: str) -> None:
    """One process per "node" (gloo on CPU): each has its own disk with its own ZeRO shard."""
    import torch.distributed as dist

    from fathom_jobs.checkpoints import upload_checkpoint

    os.environ.update({"LOCAL_WORLD_SIZE": "1", "LOCAL_RANK": "0"})
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    local = Path(local_root) / f"node{rank}" / "checkpoint-7"
    (local / "global_step7").mkdir(parents=True)
    (local / "global_step7" / f"zero_pp_rank_{rank}_optim_states.pt").write_bytes(bytes([rank]) * 100)
    (local / "latest").write_text(f"global_step7 from node {rank}")  # a file every node writes
    if rank == 0:
        (local / "trainer_state.json").write_text('{"global_step": 7}')
    upload_checkpoint(store_for(store_uri), 7, local, keep=2, extra={"fingerprint": "f"})
    dist.destroy_process_group()


def test_a_checkpoint_holds_the_shards_of_every_node(tmp_path):
    import multiprocessing

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    uri = file_uri(tmp_path / "store" / "sft")
    context = multiprocessing.get_context("fork")  # the children need nothing torch has not loaded here
    processes = [context.Process(target=_node_process, args=(rank, port, uri, str(tmp_path))) for rank in (0, 1)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0
    store = store_for(uri)
    manifest = store.read_manifest("checkpoints/step-7")
    assert set(manifest.files) == {"trainer_state.json", "latest", "global_step7/zero_pp_rank_0_optim_states.pt",
                                   "global_step7/zero_pp_rank_1_optim_states.pt"}
    assert manifest.extra == {"step": 7, "fingerprint": "f", "nodes": 2}
    store.download_dir("checkpoints/step-7", tmp_path / "resumed")  # verified against the manifest
    assert (tmp_path / "resumed" / "global_step7" / "zero_pp_rank_1_optim_states.pt").read_bytes() == b"\x01" * 100
    assert (tmp_path / "resumed" / "latest").read_text() == "global_step7 from node 0"  # the first node's copy
    # Committed: both nodes deleted their local copies.
    assert not (tmp_path / "node0" / "checkpoint-7").exists() and not (tmp_path / "node1" / "checkpoint-7").exists()
