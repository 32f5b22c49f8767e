"""A minimal webhook receiver on asyncio: verifies signatures, dedupes on the event id.

It is the reference for integrators (docs/webhooks.md) and what the tests and the benchmark
run on loopback. `respond` decides the status code of each request (e.g. fail three times).

    receiver = Receiver(secret)
    await receiver.start()          # listens on 127.0.0.1, a free port: receiver.url
    ...
    await receiver.stop()
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from consent.outbox.signing import SignatureError, verify

MAX_BODY = 1024 * 1024


@dataclass(slots=True)
class Received:
    headers: dict[str, str]
    body: bytes
    valid: bool  # the signature check passed
    status: int  # what the receiver answered
    at: float  # time.time() on arrival

    @property
    def payload(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass(slots=True)
class Receiver:
    secret: str
    respond: Callable[[Received], int] | None = None
    requests: list[Received] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)  # event ids processed (idempotency)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _server: asyncio.base_events.Server | None = None
    _open: set[asyncio.StreamWriter] = field(default_factory=set)
    url: str = ""

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._server = await asyncio.start_server(self._serve, host, port)
        bound = self._server.sockets[0].getsockname()
        self.url = f"http://{bound[0]}:{bound[1]}/hooks"
        return self.url

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._open):  # idle keep-alive connections
                writer.close()
            await self._server.wait_closed()

    @property
    def accepted(self) -> list[Received]:
        """Requests that were signed correctly and answered 2xx."""
        return [r for r in self.requests if r.valid and 200 <= r.status < 300]

    def handle(self, headers: dict[str, str], body: bytes) -> Received:
        """The documented check, then idempotent processing keyed by the event id."""
        try:
            verify(self.secret, headers, body)
            valid = True
        except SignatureError:
            valid = False
        item = Received(headers, body, valid, 401 if not valid else 200, time.time())
        if valid and self.respond is not None:
            item.status = self.respond(item)
        if valid and 200 <= item.status < 300:
            self.seen.add(headers.get("webhook-id", ""))
        self.requests.append(item)
        self.arrived.set()
        return item

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                length = min(int(headers.get("content-length") or 0), MAX_BODY)
                body = await reader.readexactly(length) if length else b""
                item = self.handle(headers, body)
                writer.write(
                    f"HTTP/1.1 {item.status} X\r\ncontent-length: 2\r\n"
                    "content-type: application/json\r\n\r\n{}".encode()
                )
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self._open.discard(writer)
            writer.close()

    async def wait_for(self, n: int, seconds: float = 10.0) -> list[Received]:
        """Until `n` requests were accepted (or the time is up); returns the accepted ones."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while len(self.accepted) < n and loop.time() < deadline:
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), max(deadline - loop.time(), 0))
            except TimeoutError:
                break
        return self.accepted
