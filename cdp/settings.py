"""Settings read from the environment (see API.md, CLI section)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from cdp.errors import InvalidInput

DEFAULT_POLICY_DIR = Path(__file__).resolve().parent.parent / "policies"
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./cdp.db"
DEFAULT_PUBLIC_URL = "http://127.0.0.1:8000"
DEFAULT_MAX_BODY = 8 * 1024 * 1024
# requests one process answers at once (api.in_flight; opt-outs have a quarter more of their
# own), and a client's time to send one (api.server): bodies held are at most (128 + 32) x 8 MiB
DEFAULT_MAX_IN_FLIGHT = 128
DEFAULT_CLIENT_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    master_key: str | None = None
    # where the other half of every data key is kept (cdp.key_store); None: beside the database
    key_store: str | None = None
    default_jurisdiction: str | None = None  # None: policy.toml's (RU as shipped)
    public_url: str = DEFAULT_PUBLIC_URL
    environment: str = "development"
    policy_dir: Path = DEFAULT_POLICY_DIR
    dev_key_dir: Path = field(default_factory=lambda: Path(".cdp"))
    max_body_bytes: int = DEFAULT_MAX_BODY
    signing_key: str | None = None
    checkpoint_interval: float = 300.0  # seconds between signed ledger checkpoints; 0: none
    statistics_interval: float = 600.0  # seconds between planner-statistics refreshes; 0: none
    # PostgreSQL connections one process keeps open, and how many more it may open under load:
    # every service and worker on a server must fit in its max_connections together
    # (`cdp serve --workers N` shares them out among its workers: api.workers)
    pool_size: int = 20
    max_overflow: int = 20
    key_store_pool_size: int = 10  # the key store's connections, all kept open (cdp.key_store_open)
    connect_timeout: float = 10.0  # seconds to open a PostgreSQL connection before giving up
    # the bearer token of GET /metrics (Prometheus); None: the endpoint is off (404)
    metrics_token: str | None = None
    # requests this process answers at once beyond which it answers 503 (opt-outs have a
    # share of their own on top: api.in_flight)
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    # seconds a client has to send a request, head and body, before a 408 (api.server)
    client_timeout: float = DEFAULT_CLIENT_TIMEOUT

    @property
    def is_production(self) -> bool:
        return self.environment == "production"

    @property
    def key_store_url(self) -> str:
        return self.key_store or default_key_store_url(self.database_url)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        url = env.get("CDP_DATABASE_URL") or DEFAULT_DATABASE_URL
        return cls(
            database_url=normalise_database_url(url),
            master_key=env.get("CDP_MASTER_KEY") or None,
            key_store=key_store_url(env.get("CDP_KEY_STORE_URL")),
            default_jurisdiction=env.get("CDP_DEFAULT_JURISDICTION") or None,
            public_url=public_url(env.get("CDP_PUBLIC_URL") or DEFAULT_PUBLIC_URL),
            environment=environment(env.get("CDP_ENV")),
            policy_dir=Path(env.get("CDP_POLICY_DIR") or DEFAULT_POLICY_DIR),
            dev_key_dir=Path(env.get("CDP_DEV_KEY_DIR") or ".cdp"),
            max_body_bytes=body_limit(env.get("CDP_MAX_BODY_BYTES")),
            signing_key=env.get("CDP_AUDIT_SIGNING_KEY") or None,
            checkpoint_interval=env_number(env, "CDP_CHECKPOINT_INTERVAL", 300.0),
            statistics_interval=env_number(env, "CDP_STATISTICS_INTERVAL", 600.0),
            pool_size=int(env_number(env, "CDP_DATABASE_POOL_SIZE", 20, whole=True, least=1)),
            max_overflow=int(env_number(env, "CDP_DATABASE_MAX_OVERFLOW", 20, whole=True)),
            connect_timeout=env_number(env, "CDP_DATABASE_CONNECT_TIMEOUT", 10.0, least=0.1),
            metrics_token=metrics_token(env.get("CDP_METRICS_TOKEN")),
            max_in_flight=int(
                env_number(
                    env, "CDP_MAX_REQUESTS_IN_FLIGHT", DEFAULT_MAX_IN_FLIGHT, whole=True, least=1
                )
            ),
            client_timeout=env_number(env, "CDP_CLIENT_TIMEOUT", DEFAULT_CLIENT_TIMEOUT, least=0.1),
        )


ENVIRONMENTS = ("development", "production")


def environment(value: str | None) -> str:
    """CDP_ENV, in any case; an unknown value is refused rather than taken for development (a
    typo such as 'Prod' would invent keys and allow plain-http webhooks in production)."""
    name = (value or "development").strip().lower()
    if name not in ENVIRONMENTS:
        raise InvalidInput.field("CDP_ENV", "must be development or production")
    return name


def public_url(value: str) -> str:
    """CDP_PUBLIC_URL, the base of the links customers are sent: an http(s) URL with a host
    (`cdp.example.com` without a scheme made links no mail client opens)."""
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput.field("CDP_PUBLIC_URL", "must be an http:// or https:// URL with a host")
    return value.strip().rstrip("/")


DATABASES = ("sqlite+aiosqlite:", "postgresql+asyncpg:")


def metrics_token(token: str | None) -> str | None:
    """CDP_METRICS_TOKEN: at least 16 characters (a scraper's secret, not a password to
    guess), or unset."""
    if not token:
        return None
    if len(token.strip()) < 16 or token != token.strip():
        raise InvalidInput.field(
            "CDP_METRICS_TOKEN", "must be at least 16 characters, without surrounding spaces"
        )
    return token


def key_store_url(url: str | None) -> str | None:
    """CDP_KEY_STORE_URL: a database URL like CDP_DATABASE_URL's, or unset."""
    return normalise_database_url(url, setting="CDP_KEY_STORE_URL") if url else None


def default_key_store_url(database_url: str) -> str:
    """Beside the database unless CDP_KEY_STORE_URL says where: SQLite `cdp.db` ->
    `cdp.keys.db` in the same directory; PostgreSQL database `cdp` -> `cdp_keys` on the same
    server (created on first use). Neither is outside a backup of the whole directory or of
    the whole server: a production deployment names a store of its own (docs/design.md)."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        path = Path(url.database or "cdp.db")
        keys = path.with_name(f"{path.stem}.keys{path.suffix or '.db'}")
        return url.set(database=str(keys)).render_as_string(hide_password=False)
    return url.set(database=f"{url.database}_keys").render_as_string(hide_password=False)


def normalise_database_url(url: str, setting: str = "CDP_DATABASE_URL") -> str:
    """Accept the plain driver names people type and pick the async driver; refuse a database
    the platform does not run on (SQLite and PostgreSQL only), naming the setting."""
    if url.startswith("sqlite:///"):
        url = "sqlite+aiosqlite:///" + url.removeprefix("sqlite:///")
    elif url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+asyncpg://" + url.split("://", 1)[1]
    if not url.startswith(DATABASES):
        raise InvalidInput.field(setting, "must be a sqlite:///FILE or postgresql://... URL")
    return libpq_sslmode(url, setting)


def libpq_sslmode(url: str, setting: str = "CDP_DATABASE_URL") -> str:
    """The URL parsed (one that does not parse is refused without repeating it: it may hold a
    password), with libpq's `sslmode=` given to asyncpg under its name, `ssl=` (same values:
    disable, prefer, require, verify-ca, verify-full), as hosted PostgreSQL hands URLs out."""
    try:
        parsed = make_url(url)
        parsed.port  # noqa: B018 -- a port that is not a number raises here
    except (ArgumentError, ValueError):
        raise InvalidInput.field(
            setting, "is not a valid URL (check the host, port and quoting)"
        ) from None
    if url.startswith("postgresql") and not parsed.database:
        # asyncpg would take the user's name (or PGDATABASE), which the platform cannot see:
        # the default key store became `None_keys`, a key store's CREATE DATABASE a traceback
        raise InvalidInput.field(setting, "must name its database: postgresql://HOST/NAME")
    if not url.startswith("postgresql") or "sslmode" not in parsed.query:
        return url
    query = dict(parsed.query)
    mode = query.pop("sslmode")
    query.setdefault("ssl", mode)
    return parsed.set(query=query).render_as_string(hide_password=False)


def body_limit(value: str | None) -> int:
    """CDP_MAX_BODY_BYTES: a whole number of bytes, at least 1 (default 8 MiB)."""
    if not value:
        return DEFAULT_MAX_BODY
    if not value.strip().isdigit() or int(value) < 1:
        raise InvalidInput.field("CDP_MAX_BODY_BYTES", "must be a whole number of bytes")
    return int(value)


def env_number(
    env: Mapping[str, str], name: str, default: float, *, whole: bool = False, least: float = 0
) -> float:
    """A numeric setting: unset or empty is `default`; otherwise a finite number (a whole one
    where `whole`) of at least `least`, else an error naming the setting (the service used to
    fail with a traceback once running, or take a value such as 0 workers that cannot work)."""
    text = (env.get(name) or "").strip()
    if not text:
        return default
    kind = "a whole number" if whole else "a number"
    try:
        value = int(text) if whole else float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < least:
        raise InvalidInput.field(name, f"must be {kind} of at least {least:g}")
    return value


FLAGS = {"1": True, "true": True, "yes": True, "on": True}
FLAGS |= {"0": False, "false": False, "no": False, "off": False}


def env_flag(env: Mapping[str, str], name: str, default: bool | None) -> bool | None:
    """A yes/no setting: unset or empty is `default`; an unknown word is refused, not taken for
    either answer (`CDP_WEBHOOK_DISPATCHER=of` used to leave the dispatcher on)."""
    text = (env.get(name) or "").strip().lower()
    if not text:
        return default
    if text not in FLAGS:
        raise InvalidInput.field(name, "must be on or off (1, true, yes / 0, false, no)")
    return FLAGS[text]
