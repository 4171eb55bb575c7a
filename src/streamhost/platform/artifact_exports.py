"""Model data served to instances on other machines (``GET /_streamhost/artifacts/{id}``).

A Ray node has no access to the platform's disk, so model data given as a local path or
``file://`` is published here: a file (``model.tar.gz``) as it is, a folder as one uncompressed
tar built once. Each export has an id derived from the source's fingerprint, which also keys the
node's cache (a node downloads each version once). Downloads need the platform's export token
(``x-streamhost-artifact-token``), handed only to the instance actors, because the data may be
private and the route is outside SigV4-signed SageMaker calls.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import tarfile
import tempfile
from pathlib import Path

from .asgi import Receive, Scope, Send, header_map, respond_json

TOKEN_HEADER = "x-streamhost-artifact-token"
ROUTE_PREFIX = "/_streamhost/artifacts/"
_CHUNK = 1024 * 1024


class ArtifactExports:
    """Export ids -> files on this machine, plus the token that guards them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.token = secrets.token_urlsafe(24)
        self._files: dict[str, Path] = {}

    def publish(self, source: Path) -> str:
        """Export a model file or folder; returns its id (stable for the same content)."""
        source = source.resolve()
        if source.is_dir():
            files = sorted(
                f"{p.relative_to(source)}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
                for p in source.rglob("*")
                if p.is_file()
            )
            export_id = hashlib.sha256("|".join(["dir", str(source), *files]).encode()).hexdigest()[:24]
            if export_id not in self._files:
                self._files[export_id] = self._tar_folder(source, export_id)
        else:
            stat = source.stat()
            export_id = hashlib.sha256(f"file|{source}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:24]
            self._files[export_id] = source
        return export_id

    def _tar_folder(self, folder: Path, export_id: str) -> Path:
        """One uncompressed tar of ``folder`` (weights do not compress), published atomically."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / f"{export_id}.tar"
        if final.is_file():
            return final
        with tempfile.NamedTemporaryFile(dir=self.root, suffix=".partial", delete=False) as tmp:
            with tarfile.open(fileobj=tmp, mode="w") as tar:
                for path in sorted(folder.rglob("*")):
                    if path.is_file() and not path.is_symlink():
                        tar.add(path, arcname=str(path.relative_to(folder)), recursive=False)
        Path(tmp.name).rename(final)
        return final

    def path(self, export_id: str) -> Path | None:
        return self._files.get(export_id)

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer ``GET /_streamhost/artifacts/{id}`` with the file, streamed in chunks."""
        headers = header_map(scope)
        if not hmac.compare_digest(headers.get(TOKEN_HEADER, ""), self.token):
            await respond_json(send, 403, {"message": "model data downloads need the platform's artifact token"})
            return
        path = self.path(scope["path"][len(ROUTE_PREFIX) :])
        if path is None or not path.is_file():
            await respond_json(send, 404, {"message": "no such model data export"})
            return
        size = path.stat().st_size
        await send({
            "type": "http.response.start", "status": 200,
            "headers": [(b"content-type", b"application/octet-stream"), (b"content-length", str(size).encode())],
        })  # fmt: skip
        with open(path, "rb") as handle:
            while True:
                chunk = await asyncio.to_thread(handle.read, _CHUNK)
                if not chunk:
                    break
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
