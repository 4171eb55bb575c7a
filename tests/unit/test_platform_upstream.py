"""The gateway's HTTP/1.1 client against raw asyncio servers that misbehave on purpose."""

from __future__ import annotations

import asyncio
import socket

import pytest

from streamhost.platform.upstream import ConnectFailed, ResponseBroken, UpstreamClient


async def serve(handler):
    """A raw TCP server; ``handler(reader, writer, request_bytes)`` answers each request."""
    connections = []

    async def on_connect(reader, writer):
        connections.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                if await handler(reader, writer, head + body) is False:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/invocations", connections


def run(coro):
    return asyncio.run(coro)


def test_chunked_stream_arrives_chunk_by_chunk_and_connection_is_reused():
    seen = []

    async def handler(reader, writer, request):
        seen.append(request)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        for part in (b"data:1\n\n", b"data:2\n\n"):
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
            await asyncio.sleep(0.05)
        writer.write(b"0\r\n\r\n")

    async def scenario():
        server, url, connections = await serve(handler)
        client = UpstreamClient()
        for _ in range(2):
            response = await client.post(url, [("content-type", "application/json")], b'{"a":1}')
            assert response.status_code == 200
            assert response.headers["content-type"] == "text/event-stream"
            assert [c async for c in response.iter_chunks()] == [b"data:1\n\n", b"data:2\n\n"]
        assert len(connections) == 1  # kept alive and reused
        assert seen[0].startswith(b"POST /invocations HTTP/1.1\r\n")
        assert b"content-length: 7" in seen[0].lower() and seen[0].endswith(b'{"a":1}')
        await client.aclose()
        server.close()

    run(scenario())


def test_content_length_answer_and_error_status():
    async def handler(reader, writer, request):
        writer.write(b'HTTP/1.1 422 Unprocessable Entity\r\ncontent-length: 11\r\n\r\n{"e":"no"}\n')

    async def scenario():
        server, url, _ = await serve(handler)
        client = UpstreamClient()
        response = await client.post(url, [], b"{}")
        assert (response.status_code, await response.read()) == (422, b'{"e":"no"}\n')
        await client.aclose()
        server.close()

    run(scenario())


def test_refused_connection_is_connect_failed():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def scenario():
        with pytest.raises(ConnectFailed):
            await UpstreamClient().post(f"http://127.0.0.1:{port}/invocations", [], b"{}")

    run(scenario())


def test_close_before_answer_is_connect_failed():
    async def handler(reader, writer, request):
        return False  # hang up without a status line

    async def scenario():
        server, url, _ = await serve(handler)
        with pytest.raises(ConnectFailed):
            await UpstreamClient().post(url, [], b"{}")
        server.close()

    run(scenario())


def test_close_mid_body_is_response_broken():
    async def handler(reader, writer, request):
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        return False

    async def scenario():
        server, url, _ = await serve(handler)
        response = await UpstreamClient().post(url, [], b"{}")
        chunks = []
        with pytest.raises(ResponseBroken):
            async for chunk in response.iter_chunks():
                chunks.append(chunk)
        assert chunks == [b"hello"]
        server.close()

    run(scenario())


def test_stale_kept_alive_connection_is_replaced_transparently():
    answered = []

    async def handler(reader, writer, request):
        answered.append(1)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        return False  # close after each answer, without saying so

    async def scenario():
        server, url, connections = await serve(handler)
        client = UpstreamClient()
        for _ in range(3):
            response = await client.post(url, [], b"{}")
            assert await response.read() == b"ok"
            await asyncio.sleep(0.05)
        assert len(answered) == 3 and len(connections) == 3
        server.close()

    run(scenario())


def test_closing_early_drops_the_connection():
    async def scenario():
        gone = asyncio.Event()

        async def handler(reader, writer, request):
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            try:
                for _ in range(250):
                    writer.write(b"1\r\nx\r\n")
                    await writer.drain()
                    await asyncio.sleep(0.02)
                    if reader.at_eof():
                        break
            except ConnectionError:
                pass
            gone.set()  # stopped early: the peer went away
            return False

        server, url, _ = await serve(handler)
        client = UpstreamClient()
        response = await client.post(url, [], b"{}")
        chunks = response.iter_chunks()
        assert await chunks.__anext__() == b"x"
        await response.aclose()
        await asyncio.wait_for(gone.wait(), 3)  # the server saw the connection close, long before 5 s of chunks
        server.close()

    run(scenario())
