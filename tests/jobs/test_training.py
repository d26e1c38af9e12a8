"""What the sft and grpo stages share (fathom_jobs.training, .checkpoints, .final_model): checkpoints
from many nodes, the collective timeout, where training logs go, and the final bf16 save — with a
fake world of threads and a file store, no GPU."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from fathom_jobs import checkpoints, final_model, training
from fathom_jobs.errors import StageInputError
from fathom_jobs.inputs import store_for
from fathom_jobs.specs import GrpoParams, SftParams
from fathom_jobs.stages import grpo, sft
from fathom_jobs.store import latest_checkpoint, save_checkpoint
from tests.support.jobs_helpers import file_uri, make_job


class ThreadWorld:
    """`size` threads playing the ranks of nodes with `per_node` processes each."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.sync = threading.Barrier(size, timeout=60)
        self.slots: list = [None] * size

    def world(self, rank: int, per_node: int) -> checkpoints.World:
        def all_gather(obj):
            self.sync.wait()
            self.slots[rank] = obj
            self.sync.wait()
            gathered = list(self.slots)
            self.sync.wait()
            return gathered

        return checkpoints.World(rank, self.size, rank % per_node, self.sync.wait, all_gather)

    def run(self, per_node: int, work) -> None:
        errors: list[BaseException] = []

        def target(rank: int) -> None:
            try:
                work(rank, self.world(rank, per_node))
            except BaseException as exc:  # surfaced below, with the rank
                errors.append(exc)
                self.sync.abort()

        threads = [threading.Thread(target=target, args=(rank,)) for rank in range(self.size)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        if errors:
            raise errors[0]


class RecordingStore:
    """A store that records when each upload ran (node 1 uploads slowly) and when the manifest was
    written, and what each node still had on its disk at that moment."""

    def __init__(self, store, nodes_root: Path) -> None:
        self.store, self.nodes_root = store, nodes_root
        self.uploads: list[tuple[str, str, float, float]] = []  # (node dir, key, start, end)
        self.commits: list[tuple[str, float, list[str]]] = []
        self.lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self.store, name)

    def upload_file(self, local, rel, progress=None):
        node = Path(local).relative_to(self.nodes_root).parts[0]
        start = time.monotonic()
        if node == "node1":
            time.sleep(0.2)
        self.store.upload_file(local, rel)
        with self.lock:
            self.uploads.append((node, rel, start, time.monotonic()))

    def write_bytes(self, rel, data):
        if rel.endswith("_MANIFEST.json"):
            still_local = sorted(p.relative_to(self.nodes_root).as_posix()
                                 for p in self.nodes_root.glob("node*/trainer/checkpoint-*"))
            self.commits.append((rel, time.monotonic(), still_local))
        self.store.write_bytes(rel, data)


def write_node_checkpoint(root: Path, node: int, step: int, ranks: range) -> Path:
    """What ZeRO and the Trainer leave on one node's disk for one checkpoint."""
    local = root / f"node{node}" / "trainer" / f"checkpoint-{step}"
    (local / f"global_step{step}").mkdir(parents=True)
    for rank in ranks:
        (local / f"global_step{step}" / f"zero_pp_rank_{rank}_optim_states.pt").write_bytes(bytes([rank]) * 64)
        (local / f"rng_state_{rank}.pth").write_bytes(bytes([rank]))
    (local / "latest").write_text(f"global_step{step} (node {node})")  # every node writes it
    if node == 0:
        (local / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
        (local / "model.safetensors").write_bytes(b"w" * 256)
    return local


# ------------------------------------------------------------------------------ checkpoints
def test_every_node_uploads_its_own_shards_at_once_and_rank_zero_commits_after_all(tmp_path):
    uri = file_uri(tmp_path / "store" / "sft")
    base = store_for(uri)
    for step in (3, 5):  # earlier checkpoints in the store, and the leftovers of a killed upload
        (tmp_path / "old").mkdir(exist_ok=True)
        (tmp_path / "old" / "f").write_text(str(step))
        save_checkpoint(base, step, tmp_path / "old", keep=5)
    base.write_bytes("checkpoints/step-6/partial.bin", b"x")  # incomplete, older than the new one
    base.write_bytes("checkpoints/step-7/stale.bin", b"x")  # an earlier attempt died saving step 7
    nodes_root = tmp_path / "nodes"
    for node in (0, 1):
        write_node_checkpoint(nodes_root, node, 4, range(2 * node, 2 * node + 2))  # an older local copy
        write_node_checkpoint(nodes_root, node, 7, range(2 * node, 2 * node + 2))
    store = RecordingStore(base, nodes_root)

    def work(rank, world):
        local = nodes_root / f"node{rank // 2}" / "trainer" / "checkpoint-7"
        checkpoints.upload_checkpoint(store, 7, local, keep=2, extra={"fingerprint": "f"}, world=world)

    ThreadWorld(4).run(per_node=2, work=work)

    manifest = base.read_manifest("checkpoints/step-7")
    shards = {f"global_step7/zero_pp_rank_{r}_optim_states.pt" for r in range(4)}
    assert set(manifest.files) == shards | {f"rng_state_{r}.pth" for r in range(4)} | {
        "latest", "trainer_state.json", "model.safetensors"}
    assert manifest.extra == {"step": 7, "fingerprint": "f", "nodes": 2}
    uploaded = [key for _, key, _, _ in store.uploads]
    assert sorted(uploaded) == sorted(f"checkpoints/step-7/{path}" for path in manifest.files)  # each file once
    by_node = {node: [(s, e) for n, _, s, e in store.uploads if n == node] for node in ("node0", "node1")}
    assert {n for n, key, _, _ in store.uploads if key.endswith("zero_pp_rank_3_optim_states.pt")} == {"node1"}
    assert {n for n, key, _, _ in store.uploads if key.endswith("/latest")} == {"node0"}  # the first node's copy
    # In parallel: each node started before the other had finished.
    assert min(s for s, _ in by_node["node0"]) < max(e for _, e in by_node["node1"])
    assert min(s for s, _ in by_node["node1"]) < max(e for _, e in by_node["node0"])
    # One commit, after the last upload, while every node still had its copy.
    [(key, committed_at, still_local)] = store.commits
    assert key == "checkpoints/step-7/_MANIFEST.json"
    assert committed_at >= max(e for _, _, _, e in store.uploads)
    assert "node1/trainer/checkpoint-7" in still_local
    # Then every node's local copies are gone (the older one too), and the store keeps keep=2.
    assert not list(nodes_root.glob("node*/trainer/checkpoint-*"))
    assert latest_checkpoint(base)[0] == 7
    assert sorted({key.split("/")[1] for key in base.list("checkpoints")}) == ["step-5", "step-7"]
    base.download_dir("checkpoints/step-7", tmp_path / "resumed")  # every file matches the manifest
    assert (tmp_path / "resumed" / "global_step7" / "zero_pp_rank_3_optim_states.pt").read_bytes() == b"\x03" * 64


def test_a_single_process_commits_and_prunes_the_same_way(tmp_path):
    store = store_for(file_uri(tmp_path / "store" / "sft"))
    for step in (2, 4, 6):
        local = write_node_checkpoint(tmp_path / "nodes", 0, step, range(1))
        checkpoints.upload_checkpoint(store, step, local, keep=2, extra={"fingerprint": "f"})
        assert not local.exists()
    assert sorted({key.split("/")[1] for key in store.list("checkpoints")}) == ["step-4", "step-6"]
    assert store.read_manifest("checkpoints/step-6").extra == {"step": 6, "fingerprint": "f", "nodes": 1}


def test_assign_uploads_takes_each_file_once_from_the_first_node_that_has_it():
    assert checkpoints.assign_uploads([{"a": 1, "shared": 1}, {"b": 1, "shared": 1}, {}]) == [["a", "shared"], ["b"], []]


def test_the_collective_timeout_covers_the_upload(tmp_path):
    default = SftParams.model_validate({"data": "x", "deepspeed": "none"})
    assert sft.sft_config(default, tmp_path / "a").ddp_timeout == 2 * 3600
    short = GrpoParams.model_validate({"data": "x", "deepspeed": "none", "collectiveTimeoutMinutes": 30,
                                       "useVllm": False})
    assert grpo.grpo_config(short, tmp_path / "b").ddp_timeout == 1800


def test_the_last_step_writes_no_checkpoint():
    from transformers import TrainerControl, TrainerState

    callback = checkpoints.StoreCheckpoints(store=None, keep=2, fingerprint="f")
    control = TrainerControl(should_save=True)
    callback.on_step_end(None, TrainerState(global_step=4, max_steps=5), control)
    assert control.should_save  # a periodic checkpoint stays
    callback.on_step_end(None, TrainerState(global_step=5, max_steps=5), control)
    assert not control.should_save  # the final model is saved once, by the stage


# ------------------------------------------------------------------------------------- logs
def job_for(params: dict, tmp_path):
    return make_job("sft", {"data": "x", **params}, file_uri(tmp_path / "store" / "sft"), attempt=2)


def test_report_to_none_or_tensorboard(tmp_path):
    for report_to, expected in (("none", []), ("tensorboard", [training.StoreTensorBoard])):
        params = SftParams.model_validate({"data": "x", "deepspeed": "none", "reportTo": report_to})
        args = sft.sft_config(params, tmp_path / "t")
        job = job_for({"reportTo": report_to}, tmp_path)
        callbacks = training.report_callbacks(job, params, args, store_for(job.output), tmp_path / "w")
        assert [type(c) for c in callbacks] == expected and args.report_to == []
    assert callbacks[0].prefix == "logs/attempt-2"


def test_wandb_reads_its_key_from_the_environment(tmp_path, monkeypatch):
    import importlib.util

    params = SftParams.model_validate({"data": "x", "deepspeed": "none", "reportTo": "wandb",
                                       "wandbApiKeySecret": "wandb"})
    real_find_spec = importlib.util.find_spec
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    monkeypatch.delenv("WANDB_DIR", raising=False)
    if real_find_spec("wandb") is None:
        with pytest.raises(StageInputError, match="reportTo: wandb needs the wandb package"):
            sft.sft_config(params, tmp_path / "t")
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "wandb" else real_find_spec(name, *a))
    with pytest.raises(StageInputError, match="WANDB_API_KEY .* wandbApiKeySecret"):
        sft.sft_config(params, tmp_path / "t")
    monkeypatch.setenv("WANDB_API_KEY", "k")
    args = sft.sft_config(params, tmp_path / "t")
    assert args.report_to == ["wandb"]  # the Trainer's own WandbCallback reports
    job = job_for({"reportTo": "wandb", "wandbApiKeySecret": "wandb"}, tmp_path)
    assert training.report_callbacks(job, params, args, store_for(job.output), tmp_path / "w") == []
    assert args.run_name == f"{job.recipe}/sft/attempt-2"
    assert os.environ["WANDB_PROJECT"] == job.recipe


def test_wandb_without_a_secret_is_a_spec_error():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="wandb needs wandbApiKeySecret"):
        SftParams.model_validate({"data": "x", "reportTo": "wandb"})


# -------------------------------------------------------------------------------- final save
def test_weights_already_in_bf16_are_written_once(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"torch_dtype": "float32"}')
    save_file({"w": torch.ones(4, dtype=torch.bfloat16), "step": torch.tensor([3])}, str(model / "model.safetensors"))
    written = (model / "model.safetensors").stat().st_mtime_ns
    final_model.cast_safetensors(model, "bfloat16")
    assert (model / "model.safetensors").stat().st_mtime_ns == written  # not rewritten
    assert (model / "config.json").read_text().count('"dtype": "bfloat16"') == 1

    save_file({"w": torch.ones(4), "step": torch.tensor([3])}, str(model / "model.safetensors"))
    final_model.cast_safetensors(model, "bfloat16")  # fp32 (the CPU path): rewritten in bf16
    tensors = load_file(str(model / "model.safetensors"))
    assert tensors["w"].dtype == torch.bfloat16 and tensors["step"].dtype == torch.int64
