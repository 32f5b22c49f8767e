"""How `cdp serve` runs the app: uvicorn, with bounds on the size of a request's head and on
the time a client takes to send a request or to take its answer.

uvicorn's faster HTTP parser (httptools, which `litestar[standard]` installs and uvicorn picks)
puts no bound on the request line and headers. A client needing no key sent 10 MB of headers
and was answered 200; one sending 100 MB kept the server copying it for half a minute and
more, and the server held all of it in memory. `BoundedHttpToolsProtocol` answers a head
over `MAX_HEAD_BYTES` with 431 (RFC 6585) and closes the connection. (uvicorn's other parser,
h11, has a bound of its own: 16 KiB.)

Nor does uvicorn bound the time a client takes: a connection that sent nothing, or one byte of
a header every few seconds, or a body short of its last bytes, was kept open for as long as the
client liked (1,000 of them held 1,000 descriptors; 100 bodies of 8 MiB short of 1 KiB held
800 MB and 100 requests in flight, api.in_flight). `client_timeout` (CDP_CLIENT_TIMEOUT) is
the time a client has to send a request, from the connection or its first byte to its last;
beyond it the answer is 408 and the connection is closed. The time the app is not reading a
body it has not asked for yet is not counted. A client that takes no part of an answer for as
long is disconnected. (uvicorn's `timeout_keep_alive`, 5 s, closes a connection idle after an
answer, until its next byte.)
"""

from __future__ import annotations

import asyncio
import socket
import sys
from functools import partial
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

# A request line and headers larger than any client of this API sends (nginx's defaults allow
# 4 lines of 8 KiB; a bearer key is 47 bytes).
MAX_HEAD_BYTES = 64 * 1024
LINGER_SECONDS = 2.0  # after a 431 or 408, how long what the client sends is read and dropped


class HeadTooLarge(Exception):
    pass


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """httptools, refusing a head over MAX_HEAD_BYTES with 431: once parsed whole, or while it
    is still arriving.

    A read that ends inside a head is counted whole unless a message also ended in it: then
    it began with the end of the message before (a client pipelining), and is not counted, so
    a head buffered is at most the bound and one read."""

    def __init__(self, *args: Any, client_timeout: float = 60.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = False
        self._in_body = False
        self._head_bytes = 0
        self._ended_in_read = False
        self._refused = False
        self._client_timeout = client_timeout
        self._reading: asyncio.TimerHandle | None = None  # the deadline of a request's bytes
        self._writing: asyncio.TimerHandle | None = None  # of the client taking an answer

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    def _await_request(self) -> None:
        if self._reading is None:
            self._reading = self.loop.call_later(self._client_timeout, self._request_late)

    def _stop_waiting(self) -> None:
        for timer in (self._reading, self._writing):
            if timer is not None:
                timer.cancel()
        self._reading = self._writing = None

    def _request_late(self) -> None:
        """The client has not sent the whole request in time: 408, unless the app is the one
        not reading (its body buffer is full: uvicorn paused reading), or has answered."""
        self._reading = None
        if self._refused or self.transport.is_closing():
            return
        cycle = self.cycle
        answering = cycle is not None and not cycle.response_complete
        if answering and self.flow.read_paused:
            self._reading = self.loop.call_later(self._client_timeout, self._request_late)
            return
        if answering:  # the app is waiting for the body: its receive() says the client left
            cycle.disconnected = True  # and what it answers is dropped
            cycle.message_event.set()
        if (answering and cycle.response_started) or (self._in_body and not answering):
            self.transport.close()  # answered already (the rest of its body was being dropped)
            return
        self._refuse(408, b"the request was not sent in time")

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._writing is None:
            self._writing = self.loop.call_later(self._client_timeout, self._answer_not_taken)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._writing is not None:
            self._writing.cancel()
            self._writing = None

    def _answer_not_taken(self) -> None:
        self._writing = None
        self.transport.abort()  # what is left unsent is dropped: connection_lost follows

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0
        self._await_request()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._in_body = True
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
        self._in_body = False
        if self._reading is not None:
            self._reading.cancel()
            self._reading = None
        super().on_message_complete()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self.cycle is None or self.cycle.response_complete:  # bytes between requests too
            self._await_request()
        self._ended_in_read = False
        super().data_received(data)
        if self._in_head and not self._ended_in_read and not self._refused:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse_head()

    def _refuse_head(self) -> None:
        self._refuse(431, b"the request line and headers are larger than the limit")

    def _refuse(self, status: int, message: bytes) -> None:
        self._refused = True
        self._in_head = False
        self._stop_waiting()
        content = [STATUS_LINE[status]]
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


def server_config(
    app: Any, host: str, port: int, client_timeout: float, **more: Any
) -> uvicorn.Config:
    """`more`: further uvicorn settings (`api.workers`: a factory, the number of workers)."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        http=partial(BoundedHttpToolsProtocol, client_timeout=client_timeout),  # type: ignore[arg-type]
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


def serve(app: Any, host: str, port: int, sock: socket.socket, client_timeout: float) -> None:
    """Serve `app` on `sock` (`listen`) until SIGINT or SIGTERM."""
    try:
        _AnnouncingServer(server_config(app, host, port, client_timeout)).run(sockets=[sock])
    finally:
        sock.close()
