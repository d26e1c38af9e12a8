"""Benchmark: the artifact store's upload/download to a local S3 server vs a plain local copy.

Creates a synthetic checkpoint (safetensors-like shards of random bytes, 2 GB by default),
starts SeaweedFS through tests/s3server.py, which always passes -master.telemetry=false and
-ip.bind=127.0.0.1 (no phoning home, loopback only), then times
  - local copy:  shutil.copyfile of every shard (the baseline),
  - upload:      Store.upload_dir   (sha256 of every file + multipart upload + manifest),
  - download:    Store.download_dir (parallel ranged GETs + sha256 verification of every file),
and, to show where the time goes, sha256 alone and the raw transfers without hashing.
Everything is removed afterwards.

    PYTHONPATH=jobs .venv/bin/python bench/bench_store.py [--shards 4x400,8x50] [--workdir /tmp]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "jobs"), str(ROOT)]

from fathom_jobs.store import open_store  # noqa: E402
from fathom_jobs.store.manifest import hash_file  # noqa: E402
from fathom_jobs.store.s3 import default_transfer_config  # noqa: E402
from tests.support.s3server import SeaweedServer  # noqa: E402

MB = 1024 * 1024
BUCKET = "fathom-bench"


def parse_shards(spec: str) -> list[int]:
    """"4x400,8x50" -> sizes in MB."""
    sizes: list[int] = []
    for part in spec.split(","):
        count, _, size = part.strip().partition("x")
        if not count.isdigit() or not size.isdigit():
            raise SystemExit(f"--shards: expected COUNTxMB[,COUNTxMB...], got {spec!r}")
        sizes += [int(size)] * int(count)
    return sizes


def make_shards(root: Path, sizes_mb: list[int]) -> int:
    root.mkdir(parents=True)
    block = 64 * MB
    for index, size_mb in enumerate(sizes_mb, 1):
        path = root / f"model-{index:05d}-of-{len(sizes_mb):05d}.safetensors"
        with open(path, "wb") as handle:
            left = size_mb * MB
            while left:
                chunk = min(block, left)
                handle.write(os.urandom(chunk))
                left -= chunk
    (root / "config.json").write_text('{"architectures": ["Qwen2ForCausalLM"]}')
    return sum(p.stat().st_size for p in root.iterdir())


class Meter:
    """Wall time plus CPU seconds of this process (client) and of the weed process (server).

    CPU per MB does not depend on what else the machine runs, so it explains the wall numbers
    on a shared box: with both sides on one 2-core VM, throughput <= 2 cores / (client+server).
    """

    def __init__(self, total_bytes: int) -> None:
        self.total_mb = total_bytes / MB
        self.server_pid: int | None = None

    def server_cpu(self) -> float:
        if self.server_pid is None:
            return 0.0
        fields = Path(f"/proc/{self.server_pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __call__(self, label: str, fn: Callable[[], object]) -> float:
        os.sync()  # start every phase with no writeback of the previous one pending
        server0, client0 = self.server_cpu(), time.process_time()
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
        client = (time.process_time() - client0) * 1000 / self.total_mb
        server = (self.server_cpu() - server0) * 1000 / self.total_mb
        rate = self.total_mb / seconds
        print(f"  {label:<34} {seconds:6.2f} s {rate:8.1f} MB/s   cpu ms/MB: client {client:5.2f}"
              f" server {server:5.2f}   load {os.getloadavg()[0]:.1f}", flush=True)
        return rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", default="4x400,8x50",
                        help="COUNTxMB,... (default 4x400,8x50)")
    parser.add_argument("--workdir", default=None, help="parent of the temp dir (needs ~4x size)")
    parser.add_argument("--chunk-mb", type=int, default=None, help="multipart chunk size")
    parser.add_argument("--concurrency", type=int, default=None, help="parallel part requests")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time sha256 alone and raw transfers")
    args = parser.parse_args()

    config = default_transfer_config()
    if args.chunk_mb:
        config.multipart_chunksize = config.multipart_threshold = args.chunk_mb * MB
    if args.concurrency:
        config.max_request_concurrency = config.max_concurrency = args.concurrency
    work = Path(tempfile.mkdtemp(prefix="fathom-bench-", dir=args.workdir))
    server: SeaweedServer | None = None
    try:
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}  {platform.node()}  {os.cpu_count()} CPUs  "
              f"load average {os.getloadavg()[0]:.1f} (other work on the machine skews wall times)")
        sizes = parse_shards(args.shards)
        total = make_shards(work / "ckpt", sizes)
        print(f"checkpoint: {len(sizes)} shards, {total / MB:.0f} MB; multipart chunk "
              f"{config.multipart_chunksize // MB} MB, {config.max_request_concurrency} requests")
        server = SeaweedServer(work / "seaweed" / "data")
        server.start()
        server.create_bucket(BUCKET)
        timed = Meter(total)
        timed.server_pid = server.process.pid if server.process else None
        os.environ.update(AWS_ACCESS_KEY_ID=server.access_key,
                          AWS_SECRET_ACCESS_KEY=server.secret_key, AWS_EC2_METADATA_DISABLED="true")
        store = open_store(f"s3://{BUCKET}/bench", endpoint=server.endpoint, config=config)
        files = sorted(p.name for p in (work / "ckpt").iterdir())

        def local_copy() -> None:
            (work / "copy").mkdir()
            for name in files:
                shutil.copyfile(work / "ckpt" / name, work / "copy" / name)

        print("results:")
        copy_rate = timed("local copy (shutil.copyfile)", local_copy)
        up_rate = timed("upload_dir (sha256 + upload)",
                        lambda: store.upload_dir(work / "ckpt", "ckpt"))
        down_rate = timed("download_dir (download + verify)",
                          lambda: store.download_dir("ckpt", work / "down"))
        if args.breakdown:
            paths = [work / "ckpt" / name for name in files]
            with ThreadPoolExecutor(store.parallel_files) as pool:
                timed("sha256 only (parallel files)",
                      lambda: list(pool.map(hash_file, paths)))
            client = store._conn.client  # type: ignore[attr-defined]

            def raw(direction: str) -> None:
                with ThreadPoolExecutor(store.parallel_files) as pool:
                    list(pool.map(lambda name: (
                        client.upload_file(str(work / "ckpt" / name), BUCKET, f"raw/{name}",
                                           Config=config)
                        if direction == "up" else
                        client.download_file(BUCKET, f"raw/{name}", str(work / "raw" / name),
                                             Config=config)), files))

            (work / "raw").mkdir()
            timed("raw boto3 upload (no hashing)", lambda: raw("up"))
            timed("raw boto3 download (no hashing)", lambda: raw("down"))
        print(f"ratio to local copy: upload {up_rate / copy_rate:.2f}x, "
              f"download {down_rate / copy_rate:.2f}x (target >= 0.5x)")
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
