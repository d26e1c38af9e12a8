"""A training stage's output: the final model saved once as bf16 safetensors, its metrics, and the
commit of both to the store (the stage's manifest last).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .store import Store, write_metrics

# Files the HF Trainer writes into a model directory that a model artifact does not need.
NOT_PART_OF_MODEL = ("training_args.bin", "README.md")


def save_final_model(trainer, tokenizer, out_dir: Path) -> None:
    """Weights as bf16 safetensors with tokenizer and chat template (every rank calls this).

    The only full save at the end (the last step writes no checkpoint): on GPUs the weights come
    out of ZeRO in bf16 and are written once; fp32 weights (the CPU path) are rewritten in bf16."""
    trainer.save_model(str(out_dir))  # ZeRO-3: gathers the 16-bit weights onto rank 0
    if not trainer.is_world_process_zero():
        return
    cast_safetensors(out_dir, "bfloat16")
    tokenizer.save_pretrained(str(out_dir))  # tokenizer files and chat_template.jinja
    for name in NOT_PART_OF_MODEL:
        (out_dir / name).unlink(missing_ok=True)


def cast_safetensors(model_dir: Path, dtype_name: str) -> None:
    """Rewrite a saved model's floating-point tensors in `dtype_name`, one shard at a time, and say
    so in config.json. Weights already all in `dtype_name` are left as they were written.

    A tied output head saved as a tensor of its own (DeepSpeed's state dicts carry it) is dropped,
    so every stage writes the same tensor names for the same architecture and merges line up.
    """
    import torch
    from safetensors.torch import load_file, save_file

    dtype = getattr(torch, dtype_name)
    config_path = model_dir / "config.json"
    config = json.loads(config_path.read_text())
    files = sorted(model_dir.glob("*.safetensors"))
    drop = _tied_duplicates(config, files)
    if not drop and _all_in_dtype(files, dtype_name):  # ZeRO's gathered 16-bit weights: written once
        files = []
    total = 0
    weight_map: dict[str, str] = {}
    for path in files:
        cast = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous()
                for k, v in load_file(str(path)).items() if k not in drop}
        total += sum(t.numel() * t.element_size() for t in cast.values())
        weight_map.update(dict.fromkeys(cast, path.name))
        save_file(cast, str(path), metadata={"format": "pt"})
        del cast
    index = model_dir / "model.safetensors.index.json"
    if index.exists() and weight_map:
        document = json.loads(index.read_text())
        document["metadata"] = {**document.get("metadata", {}), "total_size": total}
        document["weight_map"] = dict(sorted(weight_map.items()))
        index.write_text(json.dumps(document, indent=2))
    config["dtype"] = dtype_name
    config.pop("torch_dtype", None)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))


_SAFETENSORS_FLOATS = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def _all_in_dtype(files: list[Path], dtype_name: str) -> bool:
    """Every floating-point tensor of every file already in `dtype_name` (read from the headers)."""
    from safetensors import safe_open

    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                stored = handle.get_slice(name).get_dtype()
                if _SAFETENSORS_FLOATS.get(stored, dtype_name) != dtype_name:
                    return False
    return True


def _tied_duplicates(config: dict[str, Any], files: list[Path]) -> set[str]:
    import torch
    from safetensors import safe_open

    if not config.get("tie_word_embeddings"):
        return set()
    found: dict[str, Any] = {}
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            for name in ("lm_head.weight", "model.embed_tokens.weight"):
                if name in handle.keys():
                    found[name] = handle.get_tensor(name)
    head, embedding = found.get("lm_head.weight"), found.get("model.embed_tokens.weight")
    if head is not None and embedding is not None and torch.equal(head, embedding):
        return {"lm_head.weight"}
    return set()


def commit_model(store: Store, model_dir: Path, fingerprint: str, metrics: dict[str, Any]) -> None:
    """metrics.json, then the model files with the stage's manifest (written last)."""
    write_metrics(store, metrics)
    store.upload_dir(model_dir, "", fingerprint=fingerprint, extra={"kind": "model"})


def training_metrics(trainer, train_output, started: float, resumed_from: int | None) -> dict[str, Any]:
    state = trainer.state
    losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
    return {
        "steps": state.global_step,
        "resumedFromStep": resumed_from,
        "trainLoss": float(train_output.training_loss),
        "finalLoss": float(losses[-1]) if losses else None,
        "tokensSeen": int(state.num_input_tokens_seen),
        "runtimeSeconds": round(time.monotonic() - started, 3),
        "worldSize": trainer.args.world_size,
    }
