"""Measure this GPU for the cost forecast; write the calibration JSON `fathom_operator.hardware` loads.

    .venv/bin/python bench/gpu_calibrate.py --out calibration.json             # every part, <= 8 minutes
    .venv/bin/python bench/gpu_calibrate.py --parts decode,sft --out cal.json   # some parts
    .venv/bin/python bench/gpu_calibrate.py --help                              # no torch or vLLM needed

Each part runs in its own subprocess (the GPU is freed between parts, a part that hangs is killed at
its share of --budget-seconds) on one GPU, with nothing downloaded:

- decode: vLLM on the DeepSeek-R1-Distill-Qwen-14B shape (Qwen2, 48 layers, hidden 5120, 40/8 heads,
  vocabulary 152,064) with random weights (`load_format="dummy"`: only a locally written config.json
  and tokenizer), tensor parallel 1. For each cap (6,000 and 16,384) it decodes --decode-tokens tokens
  after prompts of cap/2 random tokens, i.e. at the mean context of chains generated up to that cap,
  with as many sequences as the KV cache holds. Decode tokens/s = (tokens of the full run - one per
  sequence) / (time of the full run - time of a prefill-only run of the same prompts).
- sft: `bench_train.bench_sft` on its 14B-shaped model cut to 4 layers (6 on GPUs with >= 100 GB),
  16,384-token packed blocks, ZeRO-3: MFU (6N + 12LHT) and tokens/s per GPU. One device, so no
  ZeRO-3 communication: an upper bound for multi-node runs.
- grpo: one colocated GRPO run (TRL colocate mode, vLLM at --grpo-util of the GPU) on the same cut
  model: completion tokens/s per GPU. Recorded with the cut model's parameter count, so the forecast
  uses it only for a model of that size (it also proves colocate mode works on this GPU).

The JSON (format 1) is what `fathom_operator.hardware.load_calibration` reads; the file is checked
with it before it is written. Keep the result with date and machine in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PARTS = ("decode", "sft", "grpo")
PART_SECONDS = {"decode": 220, "sft": 140, "grpo": 120}  # shares of the default 480 s budget
QWEN14B_CONFIG = {  # deepseek-ai/DeepSeek-R1-Distill-Qwen-14B config.json, less the hub-only keys
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu", "hidden_size": 5120,
    "intermediate_size": 13824, "num_hidden_layers": 48, "num_attention_heads": 40, "num_key_value_heads": 8,
    "vocab_size": 152064, "max_position_embeddings": 131072, "rope_theta": 1000000.0, "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_sliding_window": False, "sliding_window": None,
    "max_window_layers": 48, "attention_dropout": 0.0, "initializer_range": 0.02, "use_cache": True,
}


def _paths() -> None:
    for sub in ("jobs", "operator", "bench"):
        if str(REPO / sub) not in sys.path:
            sys.path.insert(0, str(REPO / sub))


def gpu_label(device_name: str) -> str:
    """GPU feature discovery's nvidia.com/gpu.product value: the NVML name with spaces as dashes."""
    return "-".join(device_name.split())


def cut_layers(memory_bytes: int) -> int:
    return 6 if memory_bytes >= 100 * 2**30 else 4  # bench_train: 6 layers need ~73 GB with ZeRO-3 at 16k


# ----------------------------------------------------------------------------------------- parts
def write_dummy_model(out: Path) -> Path:
    """config.json + a locally trained tokenizer: all vLLM needs for load_format="dummy"."""
    from fathom_jobs.tiny import build_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(out)
    config = {**QWEN14B_CONFIG, "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def kv_token_capacity(llm: Any, fallback: int) -> int:
    """Tokens the engine's KV cache holds (vLLM's block count when the front end knows it)."""
    engine = getattr(llm, "llm_engine", None)
    cache = getattr(getattr(engine, "vllm_config", None), "cache_config", None)
    blocks, size = getattr(cache, "num_gpu_blocks", None), getattr(cache, "block_size", None)
    return int(blocks * size) if blocks and size else fallback


def part_decode(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import torch
    from vllm import LLM, SamplingParams

    from fathom_operator import gpumemory as gm

    caps = sorted(args.caps)
    gen = args.decode_tokens
    llm = LLM(model=str(write_dummy_model(work / "qwen2-14b")), load_format="dummy", dtype="bfloat16",
              tensor_parallel_size=1, gpu_memory_utilization=args.util, max_model_len=caps[-1] // 2 + gen + 64,
              max_num_seqs=args.max_num_seqs, enable_prefix_caching=False, skip_tokenizer_init=True, seed=0,
              enable_sleep_mode=args.sleep_mode)
    free = args.util * torch.cuda.get_device_properties(0).total_memory - gm.weight_bytes(gm.R1_DISTILL_QWEN_14B) \
        - gm.vllm_overhead_bytes(gm.R1_DISTILL_QWEN_14B, 1, 16384, args.max_num_seqs)
    capacity = kv_token_capacity(llm, int(free / gm.kv_bytes_per_token(gm.R1_DISTILL_QWEN_14B)))
    rng = random.Random(0)
    result: dict[str, Any] = {"tokensPerSecondPerGpu": {}, "contextTokens": {}, "sequences": {},
                              "kvCacheTokens": capacity}

    def run(prompts: list[dict[str, Any]], max_tokens: int) -> tuple[float, int]:
        params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=1.0, detokenize=False)
        torch.cuda.synchronize()
        start = time.perf_counter()
        outputs = llm.generate(prompts, sampling_params=params, use_tqdm=False)
        torch.cuda.synchronize()
        return time.perf_counter() - start, sum(len(o.outputs[0].token_ids) for o in outputs)

    for cap in caps:
        prompt_len = max(16, cap // 2 - gen // 2)  # mean context while decoding = cap / 2
        n = max(1, min(args.max_num_seqs, int(0.95 * capacity // (prompt_len + gen))))
        prompts = [{"prompt_token_ids": [rng.randrange(10, 1000) for _ in range(prompt_len)]} for _ in range(n)]
        run(prompts[:2], 8)  # warm-up: CUDA graphs, allocator
        prefill_s, _ = run(prompts, 1)
        full_s, tokens = run(prompts, gen)
        result["tokensPerSecondPerGpu"][str(cap)] = (tokens - n) / max(full_s - prefill_s, 1e-9)
        result["contextTokens"][str(cap)] = prompt_len + gen / 2
        result["sequences"][str(cap)] = n
        print(f"decode cap {cap}: {n} sequences, {result['tokensPerSecondPerGpu'][str(cap)]:,.0f} tokens/s", flush=True)
    if args.sleep_mode:  # what a colocated GRPO pays per round to free and restore vLLM's memory
        start = time.perf_counter()
        llm.sleep(level=2)
        result["sleepSeconds"] = time.perf_counter() - start
        start = time.perf_counter()
        llm.wake_up()
        result["wakeSeconds"] = time.perf_counter() - start
    result.update(parameters=gm.R1_DISTILL_QWEN_14B.parameters, tensorParallelSize=1, gpuMemoryUtilization=args.util,
                  maxNumSeqs=max(result["sequences"].values()), generatedTokensPerSequence=gen)
    return result


def part_sft(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import bench_train
    import torch

    layers = args.layers or cut_layers(torch.cuda.get_device_properties(0).total_memory)
    bench_args = argparse.Namespace(shape="14b", layers=layers, seq=16384, steps=args.sft_steps, warmup=1,
                                    deepspeed="zero3", liger=False, peak_tflops=None)
    model_dir = bench_train.build_model(work / "model", bench_train.SHAPES["14b"], layers)
    measured = bench_train.bench_sft(bench_args, model_dir, work)
    return {"mfu": measured["mfu"], "tokensPerSecondPerGpu": measured["tokensPerSecondPerDevice"], "seq": 16384,
            "layers": layers, "deepspeed": "zero3", "peakMemoryGiB": measured.get("peakMemoryGiB")}


def part_grpo(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import bench_train
    import torch
    from transformers import AutoTokenizer

    from fathom_jobs.grading import Grader
    from fathom_jobs.specs import GrpoParams
    from fathom_jobs.stages import grpo
    from fathom_operator.gpumemory import shape_from_config

    layers = args.layers or cut_layers(torch.cuda.get_device_properties(0).total_memory)
    model_dir = bench_train.build_model(work / "model", bench_train.SHAPES["14b"], layers)
    steps = 1 + args.grpo_steps
    params = GrpoParams.model_validate({
        "data": "prompts", "deepspeed": "zero3", "useVllm": True, "maxCompletionTokens": args.grpo_completion,
        "numGenerations": 8, "perDeviceBatchSize": 8, "gradientAccumulationSteps": 1, "maxSteps": steps,
        "saveSteps": 10**6, "warmupRatio": 0.0})
    config = bench_train.no_saving(grpo.grpo_config(params, work / "trainer"))
    if not config.use_vllm:
        raise SystemExit("grpo: vLLM colocate is unavailable here (no GPU or no vllm package)")
    config.vllm_gpu_memory_utilization = args.grpo_util
    config.vllm_max_model_length = args.grpo_completion + 1024
    shipped = REPO / "jobs/fathom_jobs/data/aime24.jsonl"
    problems = [json.loads(line) for line in shipped.read_text().splitlines() if line.strip()]
    rows = [{"problem": p["problem"], "answer": p["answer"], "id": str(i)} for i, p in enumerate(problems)]
    prompts = grpo.rl_rows(rows, params.system_prompt)[:steps]
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    timer = bench_train.StepTimer()
    with Grader("strict") as grader:
        trainer = grpo.build_trainer(params, model_dir, tokenizer, prompts, config, grader, [timer.callback])
        trainer.train()
    history = [e for e in trainer.state.log_history if "completions/mean_length" in e][1:]
    tokens = sum(e["completions/mean_length"] * params.num_generations for e in history)
    seconds = sum(timer.steps[1:])
    parameters = shape_from_config(json.loads((model_dir / "config.json").read_text())).parameters
    return {"completionTokensPerSecondPerGpu": tokens / seconds if seconds else None, "parameters": parameters,
            "layers": layers, "vllmGpuMemoryUtilization": args.grpo_util, "maxCompletionTokens": args.grpo_completion,
            "stepSeconds": [round(s, 3) for s in timer.steps[1:]]}


# ------------------------------------------------------------------------------------- driver
def run_part(part: str, args: argparse.Namespace, limit: float) -> dict[str, Any] | None:
    """One part in a child process, killed after `limit` seconds; its result or None."""
    with tempfile.TemporaryDirectory(prefix=f"calibrate-{part}-", dir=args.workdir) as tmp:
        out = Path(tmp) / "result.json"
        command = [sys.executable, __file__, "--part", part, "--result", str(out), *args.passthrough]
        try:
            subprocess.run(command, check=True, timeout=limit, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        except subprocess.TimeoutExpired:
            print(f"{part}: stopped after {limit:.0f} s", file=sys.stderr)
            return None
        except subprocess.CalledProcessError as exc:
            print(f"{part}: failed with exit status {exc.returncode}", file=sys.stderr)
            return None
        return json.loads(out.read_text()) if out.exists() else None


def calibration_document(results: dict[str, dict[str, Any]], gpu: str, machine: str) -> dict[str, Any]:
    doc: dict[str, Any] = {"format": 1, "gpu": gpu, "measured": datetime.date.today().isoformat(), "machine": machine}
    doc.update({part: value for part, value in results.items() if value})
    return doc


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--out", default="calibration.json", help="where the calibration JSON goes")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--budget-seconds", type=float, default=480.0, help="all parts together (default 8 min)")
    parser.add_argument("--gpu", help="nvidia.com/gpu.product label to record (default: from the device name)")
    parser.add_argument("--caps", type=lambda s: [int(c) for c in s.split(",")], default=[6000, 16384],
                        help="decode: generation caps to measure at (default 6000,16384)")
    parser.add_argument("--decode-tokens", type=int, default=256, help="decode: tokens generated per sequence")
    parser.add_argument("--util", type=float, default=0.9, help="decode: vLLM gpu_memory_utilization")
    parser.add_argument("--max-num-seqs", type=int, default=1024, help="decode: vLLM max_num_seqs")
    parser.add_argument("--sleep-mode", action="store_true", help="decode: also time vLLM sleep(level=2) / wake_up")
    parser.add_argument("--layers", type=int, help="sft, grpo: layers of the cut 14B-shaped model (default by memory)")
    parser.add_argument("--sft-steps", type=int, default=4, help="sft: measured optimizer steps (after 1 warm-up)")
    parser.add_argument("--grpo-steps", type=int, default=2, help="grpo: measured steps (after 1 warm-up)")
    parser.add_argument("--grpo-completion", type=int, default=1024, help="grpo: maxCompletionTokens")
    parser.add_argument("--grpo-util", type=float, default=0.3, help="grpo: vllm_gpu_memory_utilization (TRL default)")
    parser.add_argument("--workdir", help="where models and trainer files go (default: a temporary directory)")
    parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)  # the child process's own part
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.passthrough = list(argv if argv is not None else sys.argv[1:])
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    _paths()
    if args.part:  # child: run one part, write its result
        with tempfile.TemporaryDirectory(prefix=f"calibrate-{args.part}-", dir=args.workdir) as tmp:
            result = {"decode": part_decode, "sft": part_sft, "grpo": part_grpo}[args.part](args, Path(tmp))
        Path(args.result).write_text(json.dumps(result, indent=2))
        return
    import torch  # the driver only names the device

    if not torch.cuda.is_available():
        raise SystemExit("gpu_calibrate: no CUDA device")
    name = torch.cuda.get_device_name()
    gpu = args.gpu or gpu_label(name)
    deadline = time.monotonic() + args.budget_seconds
    wanted = [p for p in PARTS if p in args.parts.split(",")]
    results: dict[str, dict[str, Any]] = {}
    for part in wanted:
        left = deadline - time.monotonic()
        share = PART_SECONDS[part] * args.budget_seconds / sum(PART_SECONDS.values())
        if left < 30:
            print(f"{part}: skipped, the budget is spent", file=sys.stderr)
            continue
        start = time.monotonic()
        result = run_part(part, args, min(share, left))
        print(f"{part}: {'done' if result else 'no result'} in {time.monotonic() - start:.0f} s", flush=True)
        if result:
            results[part] = result
    versions = []
    for module in ("torch", "vllm", "transformers", "trl", "deepspeed"):
        try:
            versions.append(f"{module} {__import__(module).__version__}")
        except (ImportError, AttributeError):
            versions.append(f"{module} absent")
    doc = calibration_document(results, gpu, f"{name}; {', '.join(versions)}; bench/gpu_calibrate.py")
    from fathom_operator.hardware import CalibrationError, parse_calibration

    try:
        parse_calibration(doc, args.out)
    except CalibrationError as exc:
        print(f"warning: the forecast will not load this file: {exc}", file=sys.stderr)
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
