"""Training throughput of the sft and grpo stages' own trainers: tokens/s per device and, for SFT, MFU.

    .venv/bin/python bench/bench_train.py sft  [--shape 14b] [--layers 6] [--seq 16384] [--steps 5]
    .venv/bin/python bench/bench_train.py grpo [--shape 14b] [--layers 6] [--completion 1024] [--steps 3]
    .venv/bin/python bench/bench_train.py sft --shape tiny --deepspeed none   # the CPU smoke run

The model is a DeepSeek-R1-Distill-Qwen-14B-shaped Qwen2 (hidden 5120, MLP 13824, 40 heads, 8 KV
heads, vocabulary 152,064) cut to `--layers` layers so that it fits one GPU, with random bf16
weights and the locally trained tokenizer (nothing comes from a hub). The trainers are built by
`fathom_jobs.stages.sft` / `.grpo` from the stage parameters (shipped DeepSpeed config, padding-free
in-order packing, gradient checkpointing), exactly as a Job builds them. One process, one device.

SFT data: random token chains with lengths drawn from 2k-12k tokens (a prompt of 256 tokens
without labels each), packed in order into `--seq`-token blocks, one block per optimizer step.
Step times are measured between optimizer steps after `--warmup` steps, synchronized on CUDA.

MFU = achieved model FLOP/s / the device's dense bf16 peak, with model FLOPs per token
6 N + 12 L H T (PaLM, appendix B: N = non-embedding matmul parameters + lm_head, L layers,
H = hidden size, T = the attended context, here each chain's own length since packed chains do
not attend to each other). Gradient-checkpointing recomputation is not counted (that would be
HFU). The causal-exact figure (attention over p+1 positions for token p) is printed beside it.

Memory, 6 layers (3.2 B parameters) on one device with ZeRO-3: ~58 GB of weights, gradients and
Adam state, plus ~15 GB of logits at 16k tokens without Liger's fused cross-entropy. That fits an
H200 (141 GB); on an 80 GB H100 pass --liger or --layers 4. GRPO generates with transformers under
the chosen ZeRO stage: zero2 keeps whole weights on the device (ZeRO-3 would gather every layer
for every generated token).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jobs"))

SHAPES = {  # DeepSeek-R1-Distill-Qwen-14B's config.json, and a toy one for CPU smoke runs
    "14b": {"hidden_size": 5120, "intermediate_size": 13824, "num_attention_heads": 40,
            "num_key_value_heads": 8, "vocab_size": 152064, "rope_theta": 1e6, "rms_norm_eps": 1e-5},
    "tiny": {"hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 2048, "rope_theta": 1e6, "rms_norm_eps": 1e-6},
}
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "H800": 989.4, "A100": 312.0}
PROMPT_TOKENS = 256


def build_model(out: Path, shape: dict, layers: int, seed: int = 0) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from fathom_jobs.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    config = Qwen2Config(**shape, num_hidden_layers=layers, max_position_embeddings=131072,
                         tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):  # initializing billions of weights is minutes on a CPU, seconds on a GPU
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def flops_per_token(shape: dict, layers: int, context: float) -> float:
    h, i = shape["hidden_size"], shape["intermediate_size"]
    kv = h // shape["num_attention_heads"] * shape["num_key_value_heads"]
    matmul_params = layers * (2 * h * h + 2 * h * kv + 3 * h * i) + h * shape["vocab_size"]
    return 6 * matmul_params + 12 * layers * h * context


def synthetic_chains(count: int, vocab: int, low: int, high: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    chains = []
    for index in range(count):
        length = rng.randint(low, high)
        ids = [rng.randrange(8, vocab) for _ in range(length)]
        chains.append({"input_ids": ids, "labels": [-100] * PROMPT_TOKENS + ids[PROMPT_TOKENS:],
                       "length": length, "id": str(index)})
    return chains


class StepTimer:
    """Wall time of every optimizer step (CUDA synchronized at both ends)."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        timer = self

        class Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                timer._sync()
                timer._start = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                timer._sync()
                timer.steps.append(time.perf_counter() - timer._start)

        self.callback = Callback()
        self.steps: list[float] = []

    @staticmethod
    def _sync() -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()


def no_saving(config):
    """No checkpoint at the last step: a 6-layer 14B-shaped one is ~45 GB of optimizer state."""
    from transformers.trainer_utils import SaveStrategy

    config.save_strategy = SaveStrategy.NO
    return config


def device_peak(override: float | None) -> tuple[str, float | None]:
    import torch

    if not torch.cuda.is_available():
        return "cpu", override
    name = torch.cuda.get_device_name()
    if override:
        return name, override
    return name, next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def bench_sft(args, model_dir: Path, work: Path) -> dict:
    import torch
    from transformers import AutoTokenizer

    from fathom_jobs.specs import SftParams
    from fathom_jobs.stages import sft

    shape = SHAPES[args.shape]
    steps = args.warmup + args.steps
    params = SftParams.model_validate({
        "data": "chains", "maxLength": args.seq, "deepspeed": args.deepspeed, "liger": args.liger,
        "perDeviceBatchSize": 1, "gradientAccumulationSteps": 1, "maxSteps": steps, "saveSteps": 10**6,
        "warmupRatio": 0.0})
    low, high = (2000, 12000) if args.seq >= 12000 else (args.seq // 8, args.seq // 2)
    chains = synthetic_chains(steps * (2 * args.seq // (low + high) + 2) + 8, shape["vocab_size"], low, high)
    blocks = sft.pack_in_order(chains, args.seq)[:steps]
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    timer = StepTimer()
    config = no_saving(sft.sft_config(params, work / "trainer"))
    trainer = sft.build_trainer(params, model_dir, tokenizer, blocks, config, [timer.callback])
    trainer.train()
    measured = timer.steps[args.warmup:]
    lengths = [n for block in blocks[args.warmup:] for n in block["seq_lengths"]]  # one block per step
    tokens, seconds = sum(lengths), sum(measured)
    contexts = {"mfu": sum(n * n for n in lengths) / tokens,  # PaLM: each token sees its chain's length
                "mfuCausal": sum(n * (n + 1) / 2 for n in lengths) / tokens}
    achieved = {k: tokens * flops_per_token(shape, args.layers, c) / seconds for k, c in contexts.items()}
    device, peak = device_peak(args.peak_tflops)
    result = {"stage": "sft", "device": device, "layers": args.layers, "shape": args.shape,
              "seq": args.seq, "deepspeed": args.deepspeed, "liger": args.liger,
              "measuredSteps": len(measured), "stepSeconds": [round(s, 3) for s in measured],
              "tokensPerSecondPerDevice": tokens / seconds, "meanChainTokens": statistics.mean(lengths),
              "achievedTflopsPerDevice": achieved["mfu"] / 1e12,
              **{k: v / (peak * 1e12) if peak else None for k, v in achieved.items()}}
    if torch.cuda.is_available():
        result["peakMemoryGiB"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def bench_grpo(args, model_dir: Path, work: Path) -> dict:
    from transformers import AutoTokenizer

    from fathom_jobs.grading import Grader
    from fathom_jobs.specs import GrpoParams
    from fathom_jobs.stages import grpo

    steps = args.warmup + args.steps
    params = GrpoParams.model_validate({
        "data": "prompts", "deepspeed": args.deepspeed, "useVllm": False, "maxCompletionTokens": args.completion,
        "numGenerations": 8, "perDeviceBatchSize": 8, "gradientAccumulationSteps": 1, "maxSteps": steps,
        "saveSteps": 10**6, "warmupRatio": 0.0})
    shipped = Path(__file__).resolve().parents[1] / "jobs/fathom_jobs/data/aime24.jsonl"
    problems = [json.loads(line) for line in shipped.read_text().splitlines() if line.strip()]
    rows = [{"problem": p["problem"], "answer": p["answer"], "id": str(i)} for i, p in enumerate(problems)]
    prompts = grpo.rl_rows(rows, params.system_prompt)[:steps]
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    timer = StepTimer()
    config = no_saving(grpo.grpo_config(params, work / "trainer"))
    with Grader("strict") as grader:
        trainer = grpo.build_trainer(params, model_dir, tokenizer, prompts, config, grader, [timer.callback])
        trainer.train()
    measured = timer.steps[args.warmup:]
    history = [e for e in trainer.state.log_history if "completions/mean_length" in e][args.warmup:]
    completion_tokens = sum(e["completions/mean_length"] * params.num_generations for e in history)
    seconds = sum(measured)
    device, _ = device_peak(args.peak_tflops)
    return {"stage": "grpo", "device": device, "layers": args.layers, "shape": args.shape,
            "generation": "transformers", "numGenerations": params.num_generations,
            "maxCompletionTokens": args.completion, "measuredSteps": len(measured),
            "stepSeconds": [round(s, 3) for s in measured],
            "completionTokensPerSecondPerDevice": completion_tokens / seconds if seconds else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=("sft", "grpo"))
    parser.add_argument("--shape", choices=tuple(SHAPES), default="14b")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--seq", type=int, default=16384, help="SFT block length (maxLength)")
    parser.add_argument("--completion", type=int, default=1024, help="GRPO completion cap")
    parser.add_argument("--steps", type=int, default=5, help="measured optimizer steps")
    parser.add_argument("--warmup", type=int, default=2, help="optimizer steps not measured")
    parser.add_argument("--deepspeed", choices=("zero3", "zero2", "none"), default="zero3")
    parser.add_argument("--liger", action="store_true")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak (default: by device name)")
    parser.add_argument("--workdir", help="where the model and trainer files go (default: a temporary directory)")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-train-", dir=args.workdir) as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        model_dir = build_model(work / "model", SHAPES[args.shape], args.layers)
        print(f"model: {args.shape} shape, {args.layers} layers, built in {time.perf_counter() - start:.0f} s", flush=True)
        result = (bench_sft if args.stage == "sft" else bench_grpo)(args, model_dir, work)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
