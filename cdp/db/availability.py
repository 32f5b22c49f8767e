"""Whether an error means the database cannot be reached right now (stopped, restarting, failing
over, refusing connections, out of connection slots), as opposed to a fault of the request.

The service answers such a request 503 (`api.errors`) and `/health` fails, until the database is
back: the pool checks each connection before use (`pool_pre_ping`), so nothing needs a restart.

A database that answered and refused the statement itself (too deep an expression, too many
bound values, a column it does not have) is no outage: the same request fails the same way
again, so it is a 500 "internal error" with no Retry-After, logged with the driver's error code
(`error_code`). SQLite reports both kinds as sqlite3.OperationalError, told apart by its result
code; asyncpg reports a statement it would not send (over 32,767 bound values) as an
InterfaceError on a connection still open.
"""

from __future__ import annotations

import socket
import sqlite3

from sqlalchemy import exc as sa

# SQLSTATEs of a connection that broke or could not be made: class 08 (connection exception),
# the server shutting down or starting (57P01-57P03), no connection slot left (53300), and the
# database itself missing or closed to connections (3D000; 55000 as PostgreSQL says "database
# ... is not currently accepting connections") while connecting
_UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300"})
_ON_CONNECT_SQLSTATES = frozenset({"3D000", "55000"})
# A database that answers but cannot store a change: out of disk (SQLite's SQLITE_FULL,
# PostgreSQL's 53100), or read-only (a file or filesystem made read-only; a PostgreSQL standby
# or `default_transaction_read_only`, as after a failover to a replica: 25006). PostgreSQL's
# read-only answer was a 500 "internal error" and `/health` said ok.
DISK_FULL, READ_ONLY = "its disk is full", "it is read-only"
_REFUSING_SQLSTATES = {"53100": DISK_FULL, "25006": READ_ONLY}
_REFUSING_SQLITE = {"SQLITE_FULL": DISK_FULL, "SQLITE_READONLY": READ_ONLY}
# SQLite's result codes (the primary one: the low byte of `sqlite_errorcode`) of a database file
# that cannot be used now, whatever the statement: locked by another process past busy_timeout
# (BUSY, LOCKED, PROTOCOL), or gone, unreadable or failing (CANTOPEN, PERM, IOERR, NOLFS). FULL
# and READONLY are `write_refused`'s. Any other code is the statement's own: SQLITE_ERROR's
# "Expression tree is too large", "parser stack overflow", "too many SQL variables", "no such
# column"; TOOBIG, RANGE, MISUSE, ABORT, INTERRUPT. (A damaged file, CORRUPT or NOTADB, arrives
# as a DatabaseError, which never was an outage here.)
_SQLITE_OUTAGES = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_PROTOCOL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PERM,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_NOLFS,
    }
)
# ... and SQLITE_ERROR "no such table": a database file removed under the service is created
# anew, empty, by the next connection the pool opens, whose every statement then says so.
_SQLITE_NO_TABLE = "no such table"


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a database error, as SQLAlchemy raises it (the driver's error in
    `orig`) or as asyncpg does; None for any other error."""
    for err in (exc, getattr(exc, "orig", None)):
        state = getattr(err, "sqlstate", None)
        if state:
            return str(state)
    return None


def _driver_error(exc: BaseException) -> BaseException | None:
    """The driver's own exception under SQLAlchemy's: sqlite3's in `orig`; asyncpg's in the
    `orig` of the DBAPI error SQLAlchemy's asyncpg dialect emulates."""
    orig = getattr(exc, "orig", None)
    inner = getattr(orig, "orig", None)
    return inner if isinstance(inner, BaseException) else orig


def error_code(exc: BaseException) -> str | None:
    """The database's code for an error, to log (never its message, which may quote the
    statement): SQLite's result code name (`SQLITE_ERROR`), or the SQLSTATE; None for others."""
    for err in (exc, getattr(exc, "orig", None)):
        name = getattr(err, "sqlite_errorname", None)
        if name:
            return str(name)
    return sqlstate(exc)


def database_unavailable(exc: BaseException) -> bool:
    """True when `exc` says the database is unreachable, not that the request was wrong."""
    if isinstance(exc, (ConnectionError, TimeoutError, socket.gaierror, KeyStoreDown)):
        return True  # asyncpg's connect to a stopped server, a name that does not resolve
    if write_refused(exc) is not None:
        return True
    if isinstance(exc, sa.TimeoutError):
        return True  # the pool exhausted
    if not isinstance(exc, sa.DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    driver = _driver_error(exc)
    code = getattr(driver, "sqlite_errorcode", None)
    if code is not None:  # SQLite says which: see _SQLITE_OUTAGES
        return code & 0xFF in _SQLITE_OUTAGES or str(driver).startswith(_SQLITE_NO_TABLE)
    state = sqlstate(exc) or ""
    if state.startswith("08") or state in _UNAVAILABLE_SQLSTATES:
        return True
    connecting = exc.statement is None  # raised while the pool opened a connection
    if connecting and (state in _ON_CONNECT_SQLSTATES or isinstance(exc.orig, OSError)):
        return True
    if not isinstance(exc, (sa.OperationalError, sa.InterfaceError)):
        return False
    # asyncpg on a connection still open (else SQLAlchemy invalidated it, above) refused to
    # send the statement: "the number of query arguments cannot exceed 32767"
    statement_refused = not connecting and type(driver).__module__.startswith("asyncpg.")
    # any other: a connection closed under SQLAlchemy's SQLite adapter ("no active
    # connection"), an error with no code to tell by
    return not statement_refused


class KeyStoreDown(Exception):
    """The key store's database (CDP_KEY_STORE_URL) is not reachable or cannot store a change,
    while the main database may be fine: said as such (`cdp.key_store`), not as the database."""


class WriteRefused(Exception):
    """The database would refuse a change now (`Database.check_writable`, for `/health`)."""

    def __init__(self, why: str) -> None:
        super().__init__(f"the database cannot store changes now ({why})")
        self.why = why


def write_refused(exc: BaseException) -> str | None:
    """Why the database refused to store a change though it answers ("its disk is full", "it
    is read-only"), or None. The change was not stored: the transaction rolled back."""
    if isinstance(exc, WriteRefused):
        return exc.why
    if (state := sqlstate(exc)) in _REFUSING_SQLSTATES:
        return _REFUSING_SQLSTATES[state]
    for err in (exc, getattr(exc, "orig", None)):
        name = getattr(err, "sqlite_errorname", None) or ""
        for prefix, why in _REFUSING_SQLITE.items():  # SQLITE_READONLY_DBMOVED and the like
            if name.startswith(prefix):
                return why
    return None
