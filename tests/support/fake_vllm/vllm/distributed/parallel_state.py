"""vllm.distributed.parallel_state's teardown functions (vLLM 0.31 names), recorded."""

from vllm import record


def destroy_model_parallel() -> None:
    record("destroy_model_parallel")


def destroy_distributed_environment() -> None:
    record("destroy_distributed_environment")
