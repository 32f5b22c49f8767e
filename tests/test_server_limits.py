"""`cdp serve`'s HTTP server bounds what a client without a key can make it hold."""

from __future__ import annotations

import asyncio
import socket

import uvicorn

from api.app import create_app
from api.server import MAX_HEAD_BYTES, server_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _ask(port: int, head_padding: int, *, at_once: bool = False) -> bytes:
    """The status line of GET /health sent with a header of `head_padding` bytes, streamed or
    (`at_once`) written in one piece."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if at_once:
            writer.write(b"GET /health HTTP/1.1\r\nHost: cdp\r\nX-Padding: ")
            writer.write(b"a" * head_padding + b"\r\n\r\n")
            await writer.drain()
            return await reader.readline()
        writer.write(b"GET /health HTTP/1.1\r\nHost: cdp\r\nX-Padding: ")
        sent = 0
        while sent < head_padding:  # as a client would stream it
            piece = min(65536, head_padding - sent)
            writer.write(b"a" * piece)
            sent += piece
            try:
                await writer.drain()
            except ConnectionError:
                break  # the server answered and closed
        else:
            writer.write(b"\r\n\r\n")
            await writer.drain()
        return await reader.readline()
    finally:
        writer.close()


async def test_a_request_head_over_the_limit_is_431_and_not_held(platform, backend):
    """httptools, which uvicorn picks, bounds no head: 10 MB of headers from a client with no
    key was answered 200 (and 100 MB held the server for half a minute and more)."""
    if backend != "sqlite":
        return  # the server's parser, not the database
    port = _free_port()
    server = uvicorn.Server(server_config(create_app(platform=platform), "127.0.0.1", port, 60.0))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:  # noqa: ASYNC110 (uvicorn offers no event to wait on)
            await asyncio.sleep(0.01)
        assert (await _ask(port, 8000)).startswith(b"HTTP/1.1 200")
        assert (await _ask(port, 10_000_000)).startswith(b"HTTP/1.1 431")
        assert (await _ask(port, MAX_HEAD_BYTES // 2)).startswith(b"HTTP/1.1 200")
        for padding in (MAX_HEAD_BYTES + 1, 200_000):  # in one read or a few
            assert (await _ask(port, padding, at_once=True)).startswith(b"HTTP/1.1 431")
    finally:
        server.should_exit = True
        await task
