"""PostgreSQL connections whose closing cannot hang.

asyncpg closes a connection by saying goodbye to the server and waiting for it to hang up, and
SQLAlchemy's pool gives it no time limit. A server whose host vanished without a reset (powered
off, a network partition, a firewall dropping packets) never hangs up: `cdp serve`, asked to
stop, waited for ever to close its pool until it was killed. A connection of an engine made
with `bounded_close_class()` waits CLOSE_TIMEOUT for the goodbye and then drops the connection
(asyncpg aborts it: the socket is closed); once one has not been answered, the engine's other
connections are dropped without waiting, so closing a pool of twenty takes one timeout, not
twenty. Dropping a connection loses nothing: the pool closes only connections that are idle,
outside any transaction.
"""

from __future__ import annotations

import asyncpg

CLOSE_TIMEOUT = 1.0  # seconds; a server that is there answers in milliseconds


def bounded_close_class() -> type[asyncpg.Connection]:
    """A connection class for one engine (`connection_class` of asyncpg.connect)."""
    unanswered = False

    class BoundedClose(asyncpg.Connection):
        async def close(self, *, timeout: float | None = None) -> None:  # noqa: ASYNC109 (asyncpg's)
            nonlocal unanswered
            if unanswered:
                self.terminate()
                return
            try:
                await super().close(timeout=CLOSE_TIMEOUT if timeout is None else timeout)
            except TimeoutError:  # asyncpg aborted it: its socket is closed
                unanswered = True

    return BoundedClose
