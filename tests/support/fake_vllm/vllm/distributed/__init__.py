from .parallel_state import destroy_distributed_environment, destroy_model_parallel

__all__ = ["destroy_distributed_environment", "destroy_model_parallel"]
