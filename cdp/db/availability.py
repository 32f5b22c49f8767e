"""Whether an error means the database cannot be reached right now (stopped, restarting, failing
over, refusing connections, out of connection slots), as opposed to a fault of the request.

The service answers such a request 503 (`api.errors`) and `/health` fails, until the database is
back: the pool checks each connection before use (`pool_pre_ping`), so nothing needs a restart.
"""

from __future__ import annotations

import socket

from sqlalchemy import exc as sa

# SQLSTATEs of a connection that broke or could not be made: class 08 (connection exception),
# the server shutting down or starting (57P01-57P03), no connection slot left (53300), and the
# database itself missing or closed to connections (3D000; 55000 as PostgreSQL says "database
# ... is not currently accepting connections") while connecting
_UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300"})
_ON_CONNECT_SQLSTATES = frozenset({"3D000", "55000"})


def database_unavailable(exc: BaseException) -> bool:
    """True when `exc` says the database is unreachable, not that the request was wrong."""
    if isinstance(exc, (ConnectionError, TimeoutError, socket.gaierror)):
        return True  # asyncpg's connect to a stopped server, a name that does not resolve
    if isinstance(exc, (sa.OperationalError, sa.InterfaceError, sa.TimeoutError)):
        return True  # SQLite's file locked or gone; a connection closed; the pool exhausted
    if not isinstance(exc, sa.DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    state = getattr(exc.orig, "sqlstate", None) or ""
    if state.startswith("08") or state in _UNAVAILABLE_SQLSTATES:
        return True
    connecting = exc.statement is None  # raised while the pool opened a connection
    return connecting and (state in _ON_CONNECT_SQLSTATES or isinstance(exc.orig, OSError))
