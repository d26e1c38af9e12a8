"""Session fixtures shared across test modules: the tiny model and the local S3 server."""

from tests.s3server import s3_server  # noqa: F401
from tests.tiny_model import tiny_model_dir  # noqa: F401
