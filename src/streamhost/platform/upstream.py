"""A lean HTTP/1.1 client for the gateway's one job: POST to an instance and relay the answer.

Why not httpx here: every streamed token crosses this hop, and httpx's layers (request models,
auth and redirect handling, anyio streams, a pool with its own locks) cost about as much CPU per
request as the rest of the gateway together; the container contract needs none of them. This
client writes the whole request in one send, parses the answer with h11 (the parser httpx uses
underneath), keeps idle connections per instance for reuse, and tells apart the two failures the
gateway treats differently:

- ``ConnectFailed``: nothing came back (refused, reset, closed before a status line). Safe to
  retry on another instance: the request never produced an answer.
- ``ResponseBroken``: the connection died in the middle of the body.

Closing a response before its end closes the connection, which is how a client's disconnect
reaches the model server and stops its generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import h11

READ_SIZE = 65536


class UpstreamError(Exception):
    pass


class ConnectFailed(UpstreamError):
    """No answer at all: the request may be retried elsewhere."""


class ResponseBroken(UpstreamError):
    """The answer started but did not finish."""


Key = tuple[str, int, bool]  # host, port, TLS


class _Connection:
    def __init__(self, key: Key, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.key = key
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(our_role=h11.CLIENT)
        self.idle_since = time.monotonic()
        self.reused = False

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()

    @property
    def usable(self) -> bool:
        return not self.reader.at_eof() and not self.writer.is_closing()


class UpstreamResponse:
    """Status, headers and a body read at most once, chunk by chunk as the instance sends it."""

    def __init__(self, client: UpstreamClient, conn: _Connection, status: int, headers: dict[str, str]) -> None:
        self._client = client
        self._conn: _Connection | None = conn
        self.status_code = status
        self.headers = headers
        self._done = False

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None:
            return
        while True:
            event = await self._client._next_event(conn, broken=ResponseBroken)
            if isinstance(event, h11.Data):
                if event.data:
                    yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self._done = True
                self._release()
                return

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.iter_chunks()])

    def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._client._put_back(conn)

    async def aclose(self) -> None:
        """Give the connection back when the body was read to its end, else close it (aborting the instance's work)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    @property
    def is_closed(self) -> bool:
        return self._conn is None


class UpstreamClient:
    """Keeps up to ``max_idle`` idle keep-alive connections per (host, port)."""

    def __init__(self, connect_timeout: float = 5.0, max_idle: int = 64, idle_expiry: float = 4.0) -> None:
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self.idle_expiry = idle_expiry  # below uvicorn's default keep-alive (5 s): never race a closing server
        self._idle: dict[Key, deque[_Connection]] = defaultdict(deque)
        self._targets: dict[str, tuple[Key, str]] = {}
        self._tls: ssl.SSLContext | None = None

    def _target(self, url: str) -> tuple[Key, str]:
        """``(host, port, tls), path`` of an absolute URL (cached: the same few URLs come back)."""
        target = self._targets.get(url)
        if target is None:
            parts = urlsplit(url)
            tls = parts.scheme == "https"
            key = (parts.hostname or "127.0.0.1", parts.port or (443 if tls else 80), tls)
            target = self._targets[url] = (key, (parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
        return target

    async def aclose(self) -> None:
        for pool in self._idle.values():
            while pool:
                pool.pop().close()

    def _put_back(self, conn: _Connection) -> None:
        try:
            conn.h11.start_next_cycle()
        except h11.LocalProtocolError:
            conn.close()
            return
        pool = self._idle[conn.key]
        if len(pool) >= self.max_idle or not conn.usable:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        conn.reused = True
        pool.append(conn)

    async def _connect(self, key: Key) -> _Connection:
        pool = self._idle.get(key)
        now = time.monotonic()
        while pool:
            conn = pool.pop()
            if conn.usable and now - conn.idle_since < self.idle_expiry:
                return conn
            conn.close()
        host, port, tls = key
        context = None
        if tls:
            context = self._tls = self._tls or ssl.create_default_context()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=context, limit=READ_SIZE * 4), self.connect_timeout
            )
        except (OSError, asyncio.TimeoutError) as exc:
            raise ConnectFailed(f"cannot connect to {host}:{port}: {exc or type(exc).__name__}") from None
        return _Connection(key, reader, writer)

    async def _next_event(self, conn: _Connection, broken: type[UpstreamError]) -> h11.Event:
        while True:
            try:
                event = conn.h11.next_event()
            except h11.RemoteProtocolError as exc:
                conn.close()
                raise broken(f"bad HTTP from the instance: {exc}") from None
            if event is h11.NEED_DATA:
                try:
                    data = await conn.reader.read(READ_SIZE)
                except OSError as exc:
                    conn.close()
                    raise broken(f"connection to the instance failed: {exc}") from None
                conn.h11.receive_data(data)
                continue
            if isinstance(event, h11.ConnectionClosed):
                conn.close()
                raise broken("the instance closed the connection")
            assert isinstance(event, h11.Event)  # NEED_DATA and PAUSED are handled above
            return event

    async def post(self, url: str, headers: list[tuple[str, str]], body: bytes) -> UpstreamResponse:
        """Send the request; returns once the status line and headers are in."""
        key, path = self._target(url)
        host, port, _tls = key
        for attempt in (0, 1):
            conn = await self._connect(key)
            request_headers = [("host", f"{host}:{port}"), ("content-length", str(len(body))), *headers]
            try:
                data = conn.h11.send(h11.Request(method="POST", target=path, headers=request_headers))
                data += conn.h11.send(h11.Data(data=body)) + conn.h11.send(h11.EndOfMessage())
                conn.writer.write(data)
                event = await self._next_event(conn, broken=ConnectFailed)
            except ConnectFailed:
                if conn.reused and attempt == 0:
                    continue  # a kept-alive connection the instance had closed: try a fresh one
                raise
            except (OSError, h11.LocalProtocolError) as exc:
                conn.close()
                if conn.reused and attempt == 0:
                    continue
                raise ConnectFailed(f"sending to {host}:{port} failed: {exc}") from None
            while isinstance(event, h11.InformationalResponse):
                event = await self._next_event(conn, broken=ConnectFailed)
            assert isinstance(event, h11.Response)
            response_headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers}
            return UpstreamResponse(self, conn, event.status_code, response_headers)
        raise ConnectFailed(f"cannot reach {host}:{port}")  # pragma: no cover
