"""`cdp serve --workers N`: N processes answer requests on one socket (PostgreSQL only).

One Python process uses one core. `cdp serve` binds the socket (api.server.listen); uvicorn's
supervisor (`Multiprocess`) starts N worker processes that accept on it, restarts one that dies
and, on SIGINT or SIGTERM, stops them all gracefully. Each worker builds the app with `app()`
(a factory, as spawned processes need an import string) from the same environment as the
supervisor; the supervisor passes it only what it decided: the worker count (`WORKERS_ENV`),
the links' base address (`CDP_PUBLIC_URL`, when `cdp serve` derived it from its host and port)
and, with metrics on, a directory of its own for the workers' Prometheus figures.

The supervising process runs the background services (the erasure worker, the webhook
dispatcher, ledger checkpoints, planner statistics) once, in a thread with an event loop of its
own, instead of each worker running a copy: N dispatchers would poll the outbox N times as
often, and N checkpointers would sign N checkpoints an interval.

Connections: CDP_DATABASE_POOL_SIZE and CDP_DATABASE_MAX_OVERFLOW are what the server may hold
open in all; the supervisor keeps a few and each worker a share of the rest (`worker_share`),
so that `--workers 4` fits the same PostgreSQL `max_connections` as one process does (a worker
added with SIGTTIN, uvicorn's signal for one more, takes a share as large as the others').

SQLite is refused: it has one writer at a time, and workers in separate processes wait for one
another's commits instead of sharing one group commit. Measured on 2 cores, 100 clients, two
workers against one: opt-outs 610 against 778/s with 32 errors, p99 1.15 s against 262 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace

import structlog
from litestar import Litestar
from prometheus_client.multiprocess import mark_process_dead
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from api.background import background_services
from api.server import announce, server_config
from cdp.cancellation import stop_if_cancelled
from cdp.db.availability import database_unavailable
from cdp.platform import Platform, open_platform
from cdp.settings import Settings

log = structlog.get_logger(__name__)

WORKERS_ENV = "CDP_SERVE_WORKERS"  # set by the supervisor for its workers: how many there are
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's multiprocess mode
PR_SET_PDEATHSIG = 1  # prctl(2)
RETRY_SECONDS = 5.0  # between attempts to open the background services' platform


def multiprocess_metrics_dir() -> str | None:
    """The directory where this worker and its siblings write their HTTP figures, or None
    outside a worker of `cdp serve --workers N` (a PROMETHEUS_MULTIPROC_DIR left in the
    environment of a single process is not read: it may hold another run's figures)."""
    if not os.environ.get(WORKERS_ENV):
        return None
    return os.environ.get(METRICS_DIR_ENV) or None


def background_share(settings: Settings) -> Settings:
    """The supervisor's connections: its background services use a few at a time."""
    return replace(
        settings,
        pool_size=min(settings.pool_size, 4),
        max_overflow=min(settings.max_overflow, 4),
        key_store_pool_size=min(settings.key_store_pool_size, 2),
    )


def worker_share(settings: Settings, workers: int) -> Settings:
    """A worker's share of the server's database connections: what the supervisor does not
    keep (`background_share`), divided equally (rounded down; at least one kept open), so
    that all the processes together hold no more than one process would."""
    kept = background_share(settings)
    return replace(
        settings,
        pool_size=max(1, (settings.pool_size - kept.pool_size) // workers),
        max_overflow=(settings.max_overflow - kept.max_overflow) // workers,
        key_store_pool_size=max(
            1, (settings.key_store_pool_size - kept.key_store_pool_size) // workers
        ),
    )


def app() -> Litestar:
    """The app of one worker (uvicorn's factory, called in the worker process)."""
    from api.app import create_app
    from cdp.logging import configure_logging

    configure_logging()
    _end_with_supervisor()
    settings = worker_share(Settings.from_env(), int(os.environ[WORKERS_ENV]))
    return create_app(settings, worker=True)


def _end_with_supervisor() -> None:
    """On Linux, have the kernel send this worker SIGTERM when its supervisor dies (killed
    with SIGKILL, say): otherwise the workers would go on serving the inherited socket
    without background services, and the next `cdp serve` could not bind its port."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("worker_not_bound_to_supervisor", errno=ctypes.get_errno())
    elif os.getppid() == 1:  # the supervisor was already gone
        os.kill(os.getpid(), signal.SIGTERM)


async def open_worker_platform(
    settings: Settings, opener: Callable[..., Awaitable[Platform]] = open_platform
) -> Platform:
    """A worker's platform. A worker started again after one died may find the database
    briefly unreachable (restarting, out of connection slots): it waits and tries again, up
    to RETRY_SECONDS apart, as a worker that failed to start would make uvicorn's supervisor
    stop every worker. Any other error (the supervisor checked the settings) is raised."""
    pause = 0.25
    while True:
        try:
            return await opener(settings, run_migrations=False)
        except Exception as exc:
            stop_if_cancelled()
            if not database_unavailable(exc):
                raise
            log.error("worker_database_unavailable", error=type(exc).__name__, retry_in=pause)
        await asyncio.sleep(pause)
        pause = min(pause * 2, RETRY_SECONDS)


class BackgroundThread:
    """The background services in a thread of the supervisor, on a platform of their own,
    until `stop()`. A platform that cannot be opened (the database is down) is tried again
    every RETRY_SECONDS."""

    def __init__(self, settings: Settings) -> None:
        self._settings = background_share(settings)
        # a daemon: a service that would not stop cannot keep the supervisor from exiting
        self._thread = threading.Thread(target=self._run, name="background-services", daemon=True)
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    def start(self) -> None:
        self._thread.start()
        self._started.wait()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 30.0) -> None:
        if self._thread.is_alive() and self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self._started.set()
        while not self._stop.is_set():
            try:
                p = await open_platform(self._settings, run_migrations=False)
            except Exception as exc:
                log.error("background_services_not_started", error=type(exc).__name__)
                await self._pause()
                continue
            if self._stop.is_set():  # told to stop while opening
                await p.close()
                return
            failed = False
            try:
                async with background_services(p):
                    log.info("background_services_started", pid=os.getpid())
                    await self._stop.wait()
            except Exception as exc:  # each service retries on its own; this is a last resort
                log.error("background_services_failed", error=type(exc).__name__)
                failed = True
            finally:
                await p.close()
            if failed:
                await self._pause()

    async def _pause(self) -> None:
        """RETRY_SECONDS, or less if told to stop."""
        assert self._stop is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), RETRY_SECONDS)


@contextlib.contextmanager
def _worker_environment(settings: Settings, workers: int) -> Iterator[None]:
    """What the workers read from the environment besides the operator's settings; restored
    afterwards. With metrics on, a new directory for their figures, removed afterwards (the
    figures of an earlier run must not be added to this one's)."""
    names = (WORKERS_ENV, "CDP_PUBLIC_URL", METRICS_DIR_ENV)
    saved = {name: os.environ.get(name) for name in names}
    metrics_dir = tempfile.mkdtemp(prefix="cdp-metrics-") if settings.metrics_token else None
    os.environ[WORKERS_ENV] = str(workers)
    os.environ["CDP_PUBLIC_URL"] = settings.public_url
    if metrics_dir:
        os.environ[METRICS_DIR_ENV] = metrics_dir
    else:
        os.environ.pop(METRICS_DIR_ENV, None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


class _Supervisor(Multiprocess):
    """uvicorn's supervisor; the live figures (requests in progress) of a worker that died or
    was retired are taken out of /metrics."""

    def keep_subprocess_alive(self) -> None:
        with self._forgetting_gone():
            super().keep_subprocess_alive()

    def handle_signals(self) -> None:  # SIGHUP replaces every worker, SIGTTOU retires one
        with self._forgetting_gone():
            super().handle_signals()

    @contextlib.contextmanager
    def _forgetting_gone(self) -> Iterator[None]:
        before = {p.pid for p in self.processes}
        yield
        metrics_dir = os.environ.get(METRICS_DIR_ENV)
        if metrics_dir:
            for pid in before - {p.pid for p in self.processes}:
                if pid is not None:
                    mark_process_dead(pid, metrics_dir)


def serve_workers(
    settings: Settings, host: str, port: int, workers: int, sock: socket.socket
) -> int:
    """Serve with `workers` processes on `sock` (api.server.listen) until SIGINT or SIGTERM;
    the exit status: 0, or 3 when a worker could not start (as uvicorn's own)."""
    config = server_config(
        "api.workers:app", host, port, settings.client_timeout, factory=True, workers=workers
    )
    with _worker_environment(settings, workers):
        announce(host, port, workers)
        supervisor = _Supervisor(config, sockets=[sock])  # handles SIGINT and SIGTERM from here
        background = BackgroundThread(settings)
        background.start()
        try:
            supervisor.run()
        finally:
            background.stop()
            sock.close()
    failed = any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes)
    return STARTUP_FAILURE if failed else 0
