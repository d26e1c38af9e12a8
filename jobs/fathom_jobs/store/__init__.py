"""Artifact store: s3:// and file:// with manifests, checksums and atomic commit.

Layout of a stage's output (DEVELOPERS.md, "Artifacts between stages"): the artifact files, `progress.json`,
`metrics.json`, and `_MANIFEST.json` written last. No manifest = no output; a manifest whose
fingerprint matches the stage's inputs means the stage can be skipped.
"""

from .base import Store
from .checkpoints import download_checkpoint, latest_checkpoint, save_checkpoint
from .errors import AccessDeniedError, IntegrityError, NotFoundError, StoreError
from .factory import open_store
from .manifest import MANIFEST_NAME, FileEntry, Manifest, fingerprint
from .progress import METRICS_NAME, PROGRESS_NAME, ProgressWriter, read_progress, write_metrics
from .transfer import ProgressCallback

__all__ = [
    "MANIFEST_NAME",
    "METRICS_NAME",
    "PROGRESS_NAME",
    "AccessDeniedError",
    "FileEntry",
    "IntegrityError",
    "Manifest",
    "NotFoundError",
    "ProgressCallback",
    "ProgressWriter",
    "Store",
    "StoreError",
    "download_checkpoint",
    "fingerprint",
    "latest_checkpoint",
    "open_store",
    "read_progress",
    "save_checkpoint",
    "write_metrics",
]
