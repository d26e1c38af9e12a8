"""The merge stage's chunked linear kernel computes what mergekit's own `linear` computes: the same
float32 (float64) sum rounded once, for any number of inputs, normalized or not, across chunk
boundaries, and is what the stage asks mergekit to run."""

from __future__ import annotations

import pytest
import torch
from mergekit.merge_methods import merge_tensors

from fathom_jobs.specs import MergeParams
from fathom_jobs.stages import merge
from fathom_jobs.stages.merge_kernel import METHOD_NAME, ensure_registered, linear_combination


def inputs(count: int, shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(shape, generator=generator, dtype=torch.float64) * 0.02).to(dtype) for _ in range(count)]


def exact(tensors, weights, normalize):
    """The weighted sum in float64, the reference both kernels are rounded from."""
    total = sum(weights) if normalize else 1.0
    return sum(w * t.double() for w, t in zip(weights, tensors, strict=True)) / total


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize(("weights", "normalize"), [([0.5, 0.5], True), ([0.3, 0.9, 0.2], True), ([0.5, 0.25], False)])
def test_the_kernel_matches_mergekit_linear(dtype, weights, normalize):
    # 37 x 1001 elements with 4096-element chunks: the last chunk is partial.
    tensors = inputs(len(weights), (37, 1001), dtype)
    ours = linear_combination(tuple(tensors), weights, normalize, chunk=4096)
    theirs = merge_tensors(tensors, "linear", parameters={"weight": weights, "normalize": normalize})
    assert ours.dtype == theirs.dtype == dtype and ours.shape == theirs.shape
    reference = exact(tensors, weights, normalize)
    # The float32 sum of the weighted terms is off by a few float32 ulps of the terms' size, then
    # rounded once: never more than one ulp of `dtype` (plus that) from the exact sum.
    terms = exact([t.abs() for t in tensors], [abs(w) for w in weights], False) / (sum(weights) if normalize else 1)
    info = torch.finfo(dtype)
    allowed = info.eps * (reference.abs() + info.tiny) + 4 * torch.finfo(torch.float32).eps * terms  # tiny: subnormals
    for result in (ours, theirs):
        assert bool(((result.double() - reference).abs() <= allowed).all())
    # ... and, counted against the correctly rounded result, it is never further off than mergekit.
    rounded = reference.to(dtype)
    assert (ours != rounded).float().mean() <= (theirs != rounded).float().mean()


def test_float64_inputs_are_summed_in_float64_and_odd_shapes_work():
    tensors = inputs(2, (3, 5, 7), torch.float64)
    ours = linear_combination(tuple(tensors), [1.0, 2.0], True, chunk=8)
    torch.testing.assert_close(ours, exact(tensors, [1.0, 2.0], True), rtol=1e-15, atol=0)
    scalars = [torch.tensor(1.0), torch.tensor(3.0)]
    assert float(linear_combination(tuple(scalars), [1.0, 1.0], True)) == 2.0
    with pytest.raises(TypeError, match="floating-point"):
        linear_combination((torch.ones(3, dtype=torch.int64),) * 2, [1.0, 1.0], True)


def test_the_stage_runs_the_kernel_through_mergekit(tmp_path):
    ensure_registered()
    ensure_registered()  # a second call in the same process is a no-op, not mergekit's duplicate error
    params = MergeParams.model_validate({"models": [{"model": "a", "weight": 1}, {"model": "b", "weight": 3}]})
    config = merge.merge_configuration([tmp_path / "a", tmp_path / "b"], params)
    assert config.merge_method == METHOD_NAME
    tensors = inputs(2, (64, 64), torch.bfloat16)
    through_mergekit = merge_tensors(tensors, METHOD_NAME, parameters={"weight": [1.0, 3.0], "normalize": True})
    assert torch.equal(through_mergekit, linear_combination(tuple(tensors), [1.0, 3.0], True))
