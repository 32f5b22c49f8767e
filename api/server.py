"""How `cdp serve` runs the app: uvicorn, with a bound on the size of a request's head.

uvicorn's faster HTTP parser (httptools, which `litestar[standard]` installs and uvicorn picks)
puts no bound on the request line and headers. A client needing no key sent 10 MB of headers
and was answered 200; one sending 100 MB kept the server copying it for half a minute and
more, and the server held all of it in memory. `BoundedHttpToolsProtocol` answers a head
over `MAX_HEAD_BYTES` with 431 (RFC 6585) and closes the connection. (uvicorn's other parser,
h11, has a bound of its own: 16 KiB.)
"""

from __future__ import annotations

import asyncio
import socket
import sys
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

# A request line and headers larger than any client of this API sends (nginx's defaults allow
# 4 lines of 8 KiB; a bearer key is 47 bytes).
MAX_HEAD_BYTES = 64 * 1024
LINGER_SECONDS = 2.0  # after a 431, how long the rest of an oversized head is read and dropped


class HeadTooLarge(Exception):
    pass


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """httptools, refusing a head over MAX_HEAD_BYTES with 431: once parsed whole, or while it
    is still arriving.

    A read that ends inside a head is counted whole unless a message also ended in it: then
    it began with the end of the message before (a client pipelining), and is not counted, so
    a head buffered is at most the bound and one read."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = False
        self._head_bytes = 0
        self._ended_in_read = False
        self._refused = False

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > MAX_HEAD_BYTES:  # a whole head read at once: stop before the app sees it
            self._refused = True
            raise HeadTooLarge  # the parser stops and uvicorn answers (send_400_response)
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        if self._refused:
            self._refuse_head()
        else:
            super().send_400_response(msg)

    def on_message_complete(self) -> None:
        self._ended_in_read = True
        super().on_message_complete()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._ended_in_read = False
        super().data_received(data)
        if self._in_head and not self._ended_in_read and not self._refused:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse_head()

    def _refuse_head(self) -> None:
        self._refused = True
        self._in_head = False
        message = b"the request line and headers are larger than the limit"
        content = [STATUS_LINE[431]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: text/plain; charset=utf-8\r\n",
                b"content-length: " + str(len(message)).encode("ascii") + b"\r\n",
                b"connection: close\r\n\r\n",
                message,
            ]
        )
        self.transport.write(b"".join(content))
        # Closed at once with the client's bytes unread, the socket would be reset and the
        # answer lost: the answer is sent, then what the client still sends is read and dropped
        # for a moment before closing.
        if self.transport.can_write_eof():
            self.transport.write_eof()
        asyncio.get_running_loop().call_later(LINGER_SECONDS, self.transport.close)


def server_config(app: Any, host: str, port: int, **more: Any) -> uvicorn.Config:
    """`more`: further uvicorn settings (`api.workers`: a factory, the number of workers)."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        http=BoundedHttpToolsProtocol,
        loop="auto",
        **more,
    )


class CannotListen(Exception):
    """The port cannot be bound: the system's reason (in use, not permitted), no more."""


def listen(host: str, port: int) -> socket.socket:
    """The socket the service will accept on, bound before anything is served, so that a port
    in use is one line and exit status 2 (`cdp serve`), as every other setting that cannot
    work: uvicorn binding it itself logged its error and exited 3. Handed to uvicorn (or its
    workers' supervisor), which listens on it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn sets it
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise CannotListen(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)  # the workers accept on it
    return sock


def announce(host: str, port: int, workers: int = 1) -> None:
    """One line on stderr once the port is bound: uvicorn's own runs at log level warning, and
    `make run` said nothing after its warnings, so a newcomer could not tell it was up."""
    shown = f"[{host}]" if ":" in host else host
    with_workers = f" with {workers} workers" if workers > 1 else ""
    print(f"serving on http://{shown}:{port}{with_workers} (Ctrl+C stops it)", file=sys.stderr)


class _AnnouncingServer(uvicorn.Server):
    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if self.started:  # listening
            announce(self.config.host, self.config.port)


def serve(app: Any, host: str, port: int, sock: socket.socket) -> None:
    """Serve `app` on `sock` (`listen`) until SIGINT or SIGTERM."""
    try:
        _AnnouncingServer(server_config(app, host, port)).run(sockets=[sock])
    finally:
        sock.close()
