"""Linear merge (the merge stage's mergekit path) against plain file I/O on two synthetic checkpoints.

    .venv/bin/python bench/bench_merge.py [--gb 2] [--rounds 2] [--workdir DIR]

Builds two Qwen2-shaped checkpoints of about `--gb` GB each (bf16 safetensors in ~1 GB shards,
random weights, the tensor names of Qwen2ForCausalLM), then times, alternately, `--rounds` times:

- plain I/O: read both checkpoints' files into memory and write one of them back out: the least
  any merge has to do (two reads, one write);
- merge: `fathom_jobs.stages.merge.merge_models`, i.e. mergekit with the stage's options and its
  chunked linear kernel (summed in float32, written in bf16);
- check: the stage's verification of the result (every tensor's header, rows recomputed).

Two regimes, the same for both contestants: "warm" (inputs in the page cache, as right after the
stage downloaded them; outputs left in the page cache) and "cold" (inputs evicted from the page
cache with posix_fadvise before each run, outputs fsynced inside the timing). Prints every timing,
the medians and the merge / plain-I/O ratios (target <= 1.5). Temporary files are removed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

HIDDEN, INTERMEDIATE, KV = 2048, 5632, 256  # GQA: 2 KV heads of 128
VOCAB = 32000
SHARD_BYTES = 1 << 30  # like save_pretrained: ~1 GB shards with an index


def qwen2_shapes(layers: int) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    for i in range(layers):
        p = f"model.layers.{i}"
        shapes |= {
            f"{p}.input_layernorm.weight": (HIDDEN,), f"{p}.post_attention_layernorm.weight": (HIDDEN,),
            f"{p}.self_attn.q_proj.weight": (HIDDEN, HIDDEN), f"{p}.self_attn.q_proj.bias": (HIDDEN,),
            f"{p}.self_attn.k_proj.weight": (KV, HIDDEN), f"{p}.self_attn.k_proj.bias": (KV,),
            f"{p}.self_attn.v_proj.weight": (KV, HIDDEN), f"{p}.self_attn.v_proj.bias": (KV,),
            f"{p}.self_attn.o_proj.weight": (HIDDEN, HIDDEN),
            f"{p}.mlp.gate_proj.weight": (INTERMEDIATE, HIDDEN), f"{p}.mlp.up_proj.weight": (INTERMEDIATE, HIDDEN),
            f"{p}.mlp.down_proj.weight": (HIDDEN, INTERMEDIATE),
        }
    return shapes | {"model.norm.weight": (HIDDEN,), "lm_head.weight": (VOCAB, HIDDEN)}


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def layers_for(gigabytes: float) -> int:
    fixed = sum(_numel(s) for s in qwen2_shapes(0).values())
    per_layer = sum(_numel(s) for s in qwen2_shapes(1).values()) - fixed
    return max(1, round((gigabytes * 1e9 / 2 - fixed) / per_layer))


def write_checkpoint(directory: Path, layers: int, seed: int) -> int:
    """Config + sharded bf16 safetensors + index; returns the bytes of weights written."""
    directory.mkdir(parents=True)
    generator = torch.Generator().manual_seed(seed)
    shards: list[dict[str, torch.Tensor]] = [{}]
    for name, shape in qwen2_shapes(layers).items():
        if sum(t.numel() * 2 for t in shards[-1].values()) >= SHARD_BYTES:
            shards.append({})
        shards[-1][name] = (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16)
    weight_map, total = {}, 0
    for index, shard in enumerate(shards, start=1):
        file_name = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(directory / file_name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file_name))
        total += sum(t.numel() * 2 for t in shard.values())
    index_doc = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index_doc))
    config = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": HIDDEN,
              "intermediate_size": INTERMEDIATE, "num_hidden_layers": layers, "num_attention_heads": 16,
              "num_key_value_heads": 2, "vocab_size": VOCAB, "max_position_embeddings": 4096,
              "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "dtype": "bfloat16"}
    (directory / "config.json").write_text(json.dumps(config))
    return total


def plain_io(inputs: list[Path], out: Path) -> None:
    """Read every shard of both inputs into memory, write the first one's bytes back out.

    Plain file I/O with one reused buffer per input: the least any merge has to do. (safetensors'
    `load_file` is no baseline: it maps the file and reads no tensor data until a tensor is used.)
    """
    out.mkdir()
    shards = sorted(inputs[0].glob("*.safetensors"))
    largest = max(path.stat().st_size for shard in shards for path in (shard, inputs[1] / shard.name))
    buffers = [bytearray(largest), bytearray(largest)]
    for shard in shards:
        sizes = []
        for buffer, path in zip(buffers, (shard, inputs[1] / shard.name), strict=True):
            with path.open("rb", buffering=0) as handle:
                sizes.append(handle.readinto(buffer))
        with (out / shard.name).open("wb", buffering=0) as handle:
            handle.write(memoryview(buffers[0])[: sizes[0]])


def merge_and_check(inputs: list[Path], params, expected, out: Path, check_times: list[float]) -> None:
    from fathom_jobs.stages.merge import merge_models, verify_merge

    merge_models(inputs, params, out)
    start = time.perf_counter()
    verify_merge(out, inputs, [0.5, 0.5], "bfloat16", expected)
    check_times.append(time.perf_counter() - start)


def _files(*roots: Path) -> list[Path]:
    return [p for root in roots if root.exists() for p in sorted(root.rglob("*")) if p.is_file()]


def _each_fd(roots: tuple[Path, ...], evict: bool) -> None:
    for path in _files(*roots):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages cannot be dropped
            if evict:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed(action, inputs: list[Path], out: Path, cold: bool) -> float:
    if cold:
        _each_fd(tuple(inputs), evict=True)  # only these files leave the page cache
    start = time.perf_counter()
    action()
    if cold:
        _each_fd((out,), evict=False)
    elapsed = time.perf_counter() - start
    _each_fd((out,), evict=True)  # the next contestant starts without this one's output in memory
    shutil.rmtree(out)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=2.0, help="size of each checkpoint in GB")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workdir", help="where the checkpoints go (default: a temporary directory)")
    args = parser.parse_args()

    from fathom_jobs.specs import MergeParams
    from fathom_jobs.stages.merge import check_inputs

    start = time.perf_counter()
    import mergekit.merge  # noqa: F401  (a once-per-job cost, kept out of the per-merge timings)

    print(f"import mergekit: {time.perf_counter() - start:.1f} s")
    root = Path(tempfile.mkdtemp(prefix="bench-merge-", dir=args.workdir))
    try:
        layers = layers_for(args.gb)
        inputs = [root / "a", root / "b"]
        sizes = [write_checkpoint(path, layers, seed) for seed, path in enumerate(inputs)]
        print(f"2 checkpoints: {layers} layers, {sizes[0] / 1e9:.2f} GB each, "
              f"{len(list(inputs[0].glob('*.safetensors')))} shards; torch threads {torch.get_num_threads()}")
        params = MergeParams.model_validate({"models": [{"model": "a", "weight": 0.5}, {"model": "b", "weight": 0.5}]})
        expected = check_inputs(inputs, ["a", "b"])
        for regime in ("warm", "cold"):
            cold = regime == "cold"
            plain, merged, checked = [], [], []
            for round_ in range(args.rounds):
                plain.append(timed(lambda: plain_io(inputs, root / "plain"), inputs, root / "plain", cold))
                total = timed(lambda checked=checked: merge_and_check(inputs, params, expected, root / "merged", checked),
                              inputs, root / "merged", cold)
                merged.append(total - checked[-1])
                print(f"{regime} round {round_ + 1}: plain I/O {plain[-1]:.1f} s, merge {merged[-1]:.1f} s, "
                      f"check {checked[-1]:.1f} s", flush=True)
            p, m, c = (statistics.median(x) for x in (plain, merged, checked))
            print(f"{regime} median: plain I/O {p:.1f} s, merge {m:.1f} s (ratio {m / p:.2f}), "
                  f"merge + check {m + c:.1f} s (ratio {(m + c) / p:.2f})", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
