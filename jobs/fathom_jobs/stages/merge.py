"""merge: a linear merge of N models with mergekit (Fathom-R1-14B = 0.5 x v0.6 + 0.5 x v0.4).

    merged[t] = sum_i w_i * model_i[t]  /  (sum_i w_i if normalize else 1)

for every tensor t, computed in float32 and written in `dtype`. mergekit plans, loads and writes;
the arithmetic is `merge_kernel.py`'s chunked form of mergekit's linear kernel (the same sum, about
a tenth of the memory traffic). Before anything is uploaded the result is checked against the
inputs: the same tensor names and shapes, floating tensors in `dtype`, and for every tensor a
slice of rows recomputed from the inputs and compared with the merged one (to the rounding of
`dtype`). The merged model carries the first model's tokenizer and chat template; the inputs must
share one vocabulary (averaging embeddings of different vocabularies would produce a model that
looks fine and is garbage).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from ..errors import StageInputError
from ..inputs import cache_root, fetch
from ..memo import job_output
from ..specs import JobSpec, MergeParams
from ..store import write_metrics

log = logging.getLogger("fathom_jobs.merge")
SAFETENSORS_DTYPES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}
# Small enough that little writing is left after the last tensor (async_write below overlaps the
# rest; 2 GB shards left 2.5 s of a 2 GB merge waiting on the writer).
OUT_SHARD_BYTES = 512 * 1024**2
CHECK_ROWS = 8  # rows of each tensor recomputed from the inputs (the whole tensor when smaller)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "chat_template.json", "tokenizer.model", "merges.txt", "vocab.json", "added_tokens.json",
                   "generation_config.json")


# ------------------------------------------------------------------------------- safetensors
def tensor_files(model_dir: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it (sharded or not)."""
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise StageInputError(f"{model_dir} has no safetensors weights")
    where: dict[str, Path] = {}
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                where[name] = path
    return where


def tensor_headers(model_dir: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Tensor name -> (shape, safetensors dtype) from the file headers, without reading data."""
    headers: dict[str, tuple[tuple[int, ...], str]] = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        with path.open("rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(size))
        headers.update({k: (tuple(v["shape"]), v["dtype"]) for k, v in header.items() if k != "__metadata__"})
    return headers


def check_inputs(model_dirs: list[Path], uris: list[str]) -> dict[str, tuple[tuple[int, ...], str]]:
    """Same tensors with the same shapes and one vocabulary in every input, or a StageInputError."""
    first = tensor_headers(model_dirs[0])
    first_vocab = _vocabulary(model_dirs[0])
    for model_dir, uri in zip(model_dirs[1:], uris[1:], strict=True):
        other = tensor_headers(model_dir)
        if set(other) != set(first):
            missing = sorted(set(first) ^ set(other))[:3]
            raise StageInputError(f"{uri} does not have the same tensors as {uris[0]} (e.g. {', '.join(missing)})")
        for name, (shape, _) in first.items():
            if other[name][0] != shape:
                raise StageInputError(f"{uri}: {name} has shape {list(other[name][0])}, {uris[0]} has {list(shape)}")
        if _vocabulary(model_dir) != first_vocab:
            raise StageInputError(f"{uri} has another tokenizer vocabulary than {uris[0]}")
    return first


def _vocabulary(model_dir: Path) -> dict[str, int] | None:
    path = model_dir / "tokenizer.json"
    if not path.exists():
        return None
    model = json.loads(path.read_text()).get("model", {})
    added = json.loads(path.read_text()).get("added_tokens", [])
    return {**model.get("vocab", {}), **{t["content"]: t["id"] for t in added}}


# -------------------------------------------------------------------------------------- merge
def normalized_weights(params: MergeParams) -> list[float]:
    weights = [m.weight for m in params.models]
    if not params.normalize:
        return weights
    total = sum(weights)
    if total == 0:
        raise StageInputError("the merge weights sum to 0: nothing to normalize by (set normalize: false)")
    return [w / total for w in weights]


def load_dtype(model_dirs: list[Path], out_dtype: str) -> str:
    """The dtype mergekit loads tensors in: the inputs' own when they are all in `out_dtype`.

    mergekit's linear merge sums in float32 whatever it is given, so loading bf16 inputs as bf16
    gives the same result as loading them as float32, without a cast of every input tensor.
    Inputs in any other dtype are loaded in float32, so nothing is rounded before the sum.
    """
    stored = {dtype for d in model_dirs for _, dtype in tensor_headers(d).values() if dtype.startswith(("F", "BF"))}
    return out_dtype if stored == {SAFETENSORS_DTYPES[out_dtype]} else "float32"


def merge_configuration(model_dirs: list[Path], params: MergeParams):
    from mergekit.config import MergeConfiguration

    from .merge_kernel import ensure_registered

    return MergeConfiguration.model_validate({
        "merge_method": ensure_registered(),  # mergekit's linear arithmetic, chunked (merge_kernel.py)
        "models": [{"model": str(path), "parameters": {"weight": m.weight}}
                   for path, m in zip(model_dirs, params.models, strict=True)],
        "parameters": {"normalize": params.normalize},
        "dtype": load_dtype(model_dirs, params.dtype),  # summed in float32, rounded once to out_dtype
        "out_dtype": params.dtype,
    })


def merge_models(model_dirs: list[Path], params: MergeParams, out_dir: Path) -> None:
    import torch
    from mergekit.merge import MergeOptions, run_merge

    options = MergeOptions(
        device="cuda" if torch.cuda.is_available() else "cpu",
        copy_tokenizer=False,  # the first model's tokenizer is copied below, deterministically
        write_model_card=False,
        quiet=True,
        # Shards are written by a writer thread while the next shard is computed.
        async_write=True,
        out_shard_size=OUT_SHARD_BYTES,
        allow_crimes=False,
    )
    run_merge(merge_configuration(model_dirs, params), str(out_dir), options)
    for name in TOKENIZER_FILES:
        if (model_dirs[0] / name).exists():
            shutil.copy2(model_dirs[0] / name, out_dir / name)


# -------------------------------------------------------------------------------------- check
def verify_merge(out_dir: Path, model_dirs: list[Path], weights: list[float], dtype_name: str,
                 expected: dict[str, tuple[tuple[int, ...], str]], rows: int = CHECK_ROWS) -> dict[str, Any]:
    """Names, shapes and dtypes of every tensor, and a slice of each recomputed from the inputs."""
    import torch

    dtype = getattr(torch, dtype_name)
    safetensors_dtype = SAFETENSORS_DTYPES[dtype_name]
    merged = tensor_headers(out_dir)
    if set(merged) != set(expected):
        different = sorted(set(merged) ^ set(expected))[:3]
        raise RuntimeError(f"the merged model's tensors differ from the inputs' (e.g. {', '.join(different)})")
    worst = 0.0
    with contextlib.ExitStack() as stack:
        read = _row_reader(stack)
        sources = [tensor_files(d) for d in model_dirs]
        out_files = tensor_files(out_dir)
        for name, (shape, input_dtype) in expected.items():
            if merged[name][0] != shape:
                raise RuntimeError(f"merged {name} has shape {list(merged[name][0])}, the inputs {list(shape)}")
            floating = input_dtype.startswith(("F", "BF"))
            if floating and merged[name][1] != safetensors_dtype:
                raise RuntimeError(f"merged {name} is {merged[name][1]}, expected {safetensors_dtype}")
            if floating:
                picked = slice(0, min(rows, shape[0])) if shape else slice(None)
                terms = torch.stack([w * read(files[name], name, picked) for w, files in zip(weights, sources, strict=True)])
                worst = max(worst, _compare(name, read(out_files[name], name, picked), terms, dtype))
    return {"tensors": len(expected), "checkedRows": rows, "maxAbsError": worst}


def _compare(name: str, result, terms, dtype) -> float:
    """The largest difference; raises where it exceeds rounding to `dtype` (and float32 summation order)."""
    import torch

    error = (result - terms.sum(0)).abs()
    eps = torch.finfo(dtype).eps
    allowed = 4 * eps * terms.abs().sum(0) + torch.finfo(dtype).tiny  # relative to the terms' size
    if bool((error > allowed).any()):
        raise RuntimeError(f"merged {name} is not the weighted average of the inputs "
                           f"(largest difference {float(error.max()):.3g})")
    return float(error.max()) if error.numel() else 0.0


def _row_reader(stack: contextlib.ExitStack):
    """read(path, name, rows) -> float32 tensor, each file opened once."""
    import torch
    from safetensors import safe_open

    handles: dict[Path, Any] = {}

    def read(path: Path, name: str, picked: slice):
        if path not in handles:
            handles[path] = stack.enter_context(safe_open(str(path), framework="pt"))
        sliced = handles[path].get_slice(name)
        tensor = sliced[picked] if len(sliced.get_shape()) else handles[path].get_tensor(name)
        return tensor.to(torch.float32)

    return read


def run(job: JobSpec) -> None:
    params = MergeParams.model_validate(job.params)
    store, fingerprint, done = job_output(job)
    if done:
        return
    uris = [m.model for m in params.models]
    started = time.monotonic()
    weights = normalized_weights(params)
    model_dirs = [fetch(uri, kind="model", storage=job.storage) for uri in uris]
    expected = check_inputs(model_dirs, uris)
    with tempfile.TemporaryDirectory(dir=cache_root()) as tmp:
        out_dir = Path(tmp) / "merged"
        merge_models(model_dirs, params, out_dir)
        check = verify_merge(out_dir, model_dirs, weights, params.dtype, expected)
        metrics = {"method": params.method, "models": [{"model": u, "weight": m.weight, "appliedWeight": w}
                                                        for u, m, w in zip(uris, params.models, weights, strict=True)],
                   "normalize": params.normalize, "dtype": params.dtype, **check,
                   "runtimeSeconds": round(time.monotonic() - started, 3)}
        write_metrics(store, metrics)
        store.upload_dir(out_dir, "", fingerprint=fingerprint, extra={"kind": "model"})  # manifest last
