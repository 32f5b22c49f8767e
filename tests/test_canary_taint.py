"""Canary taint review: unique canary values planted as every kind of personal data, through
the ways data enters, then searched for in the channels where they must not turn up."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from cdp.crypto.master import MasterKey
from cdp.events_import import run_event_import
from cdp.importer import run_import
from cdp.keyring import rotate_master_key
from cdp.platform import Platform
from consent.dsr.worker import run_pending
from tests.helpers import raw_bytes_of, raw_database_bytes
from tests.test_erasure import wrapped_keys
from tests.test_import import run_cli
from tests.test_pii_in_errors import everything_said
from tests.test_webhooks_delivery import drain, subscribe


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def owner_only(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


@pytest.mark.parametrize("existing", [False, True])
async def test_the_rejects_files_are_owner_only(platform, tmp_path, existing):
    """The rejects file sits beside a customer file and says which of its lines were refused
    and why: it is created (or, named again, made) readable by its owner only, whatever the
    umask, as the customer file should be."""
    people = tmp_path / "people.csv"
    people.write_text("email,birth_date\nqz.rejected@example.org,1937-13-45\n")
    events = tmp_path / "events.csv"
    events.write_text("event_id,type,occurred_at,email\ne1,purchase,bad,qz.rejected@example.org\n")
    for path in (people, events):
        rejects = path.with_name(path.name + ".rejects.csv")
        if existing:
            rejects.write_text("old\n")
            rejects.chmod(0o644)
    with umask(0o022):
        profiles = await run_import(platform, people, "crm", workers=0)
        orders = await run_event_import(platform, events, "shop")
    for summary in (profiles, orders):
        assert summary.rejects_path is not None
        text = summary.rejects_path.read_text()
        assert "qz.rejected" not in text and "1937-13-45" not in text and "old" not in text
        assert owner_only(summary.rejects_path), oct(summary.rejects_path.stat().st_mode)


async def test_a_new_sqlite_database_and_key_store_are_owner_only(tmp_path):
    """The SQLite database (city, traits and every ciphertext, the wrapped half of every data
    key) and its key store (the other half) are created readable by their owner only, with
    their -wal and -shm files (SQLite gives them the database's mode), whatever the umask:
    with 0644 any local account could copy both halves of every customer's key."""
    from cdp.platform import open_platform
    from tests.conftest import make_settings

    url = f"sqlite+aiosqlite:///{tmp_path / 'cdp.db'}"
    with umask(0o022):
        p = await open_platform(make_settings(url, tmp_path))
        try:
            await p.db.purge_wal()  # the WAL's file is there, with the database open
            files = sorted(tmp_path.glob("cdp*.db*"))
            names = {f.name for f in files}
            assert {"cdp.db", "cdp.db-wal", "cdp.keys.db"} <= names, names
            loose = {
                f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in files if not owner_only(f)
            }
            assert not loose
        finally:
            await p.close()


async def test_no_driver_log_repeats_a_bound_value_even_at_debug(platform, client, keys, caplog):
    """SQLAlchemy hides bound values (`hide_parameters`), but aiosqlite's own logger wrote
    every statement with its parameters at DEBUG (the plaintext city and traits, ciphertexts,
    blind indexes): a root logger set to DEBUG, to look into anything, spilled them."""
    record = {"source": "crm", "email": "qz.driver@example.org", "city": "Qzdrivercity"}
    with everything_said(caplog) as said:
        r = await client.post("/v1/profiles", json=record, headers=keys["ingest"])
        assert r.status_code == 201, r.text
    assert not [text for text in said if "Qzdrivercity" in text or "qz.driver" in text]


@dataclass(frozen=True)
class Canary:
    """One customer's personal data, each value unique to this file, and every form in which
    it must not turn up (as written, normalised, E.164 and national digits)."""

    tag: str  # a letter: no two canaries share a value
    cyrillic: bool

    @property
    def email(self) -> str:
        return f"Qz{self.tag}Canary.Mail@Example.org"

    @property
    def digits(self) -> str:  # national, 10 digits
        return "91655" + str(ord(self.tag) % 100).zfill(2) + "731"

    def phone(self, style: int) -> str:
        d = self.digits
        return [
            f"+7 {d[:3]} {d[3:6]}-{d[6:8]}-{d[8:]}",
            f"8 ({d[:3]}) {d[3:6]}-{d[6:8]}-{d[8:]}",
            f"+7{d}",
            f"8{d}",
        ][style % 4]

    @property
    def first_name(self) -> str:
        return ("Жкзщ" if self.cyrillic else "Qzfirst") + self.tag

    @property
    def last_name(self) -> str:
        return ("Щывкова" if self.cyrillic else "Qzlast") + self.tag

    @property
    def birth_date(self) -> str:
        return f"1937-02-{10 + ord(self.tag) % 18}"

    @property
    def address(self) -> str:
        return f"ул. Канарейкина {self.tag}, {ord(self.tag)}"

    @property
    def postcode(self) -> str:
        return f"98{ord(self.tag):04d}"

    @property
    def city(self) -> str:
        return f"Qzcity{self.tag}"

    @property
    def external_id(self) -> str:
        return f"QZEXT-{self.tag}-777"

    @property
    def ip(self) -> str:
        return f"198.51.100.{100 + ord(self.tag) % 100}"

    @property
    def user_agent(self) -> str:
        return f"QzAgent/{self.tag}.7"

    @property
    def trait(self) -> str:
        return f"Qztrait{self.tag}"

    def record(self, style: int = 0, **more: Any) -> dict[str, Any]:
        return {
            "source": "crm",
            "external_id": self.external_id,
            "email": self.email,
            "phone": self.phone(style),
            "first_name": self.first_name,
            "last_name": self.last_name,
            "birth_date": self.birth_date,
            "postal_address": self.address,
            "postcode": self.postcode,
            "city": self.city,
            "country": "RU",
            "traits": {"tier": self.trait},
            "consents": [
                {
                    "purpose": "marketing",
                    "channel": "email",
                    "status": "granted",
                    "evidence": self.evidence(),
                }
            ],
            **more,
        }

    def evidence(self) -> dict[str, str]:
        return {
            "wording_id": "nl-v3",
            "method": "double_opt_in",
            "ip": self.ip,
            "user_agent": self.user_agent,
            "page_url": f"https://shop.example/s?u={self.email.lower()}",
        }

    def forms(self) -> dict[str, str]:
        """What must not be found where personal data must not be (the city and traits aside:
        stored plainly for segments, `plain`)."""
        return {
            "email": self.email.split("@")[0].lower(),
            "first_name": self.first_name,
            "last_name": self.last_name,
            "phone": self.digits[3:],  # in E.164 and national forms alike
            "birth_date": self.birth_date,
            "address": f"Канарейкина {self.tag}",
            "postcode": self.postcode,
            "external_id": self.external_id,
            "ip": self.ip,
            "user_agent": self.user_agent,
        }

    def plain(self) -> dict[str, str]:
        return {"city": self.city, "trait": self.trait}


def found(blob: bytes | str, values: dict[str, str]) -> list[str]:
    """The names of the values that `blob` holds, in any case, as UTF-8 or hex (pg_dump)."""
    raw = (blob.encode() if isinstance(blob, str) else blob).lower()
    return [
        name
        for name, value in values.items()
        if value.lower().encode() in raw or value.encode().hex().encode() in raw
    ]


async def raw_key_store_bytes(p: Platform) -> bytes:
    """Everything the key store holds on disk (SQLite file and -wal) or in a dump."""
    return await raw_bytes_of(p.keys.store.db, p.settings.key_store_url)  # type: ignore[union-attr]


async def key_shares_of(p: Platform, pid: str, key_ids: range = range(1, 3)) -> list[bytes]:
    """The key store's halves of the profile's data keys (its first and the one an unmerge
    gave it) that it holds."""
    from cdp.key_store import key_shares, share_id

    ids = [share_id(uuid.UUID(pid), k) for k in key_ids]
    async with p.keys.store.db.read() as conn:  # type: ignore[union-attr]
        query = select(key_shares.c.share).where(key_shares.c.profile_id.in_(ids))
        rows = await conn.execute(query)
        return [bytes(s) for (s,) in rows]


def bulk_files(tmp: Path, ok: Canary, refused: Canary) -> tuple[Path, Path, Path]:
    """A CSV and an NDJSON file of customers and a CSV of orders: `ok` imported, every row of
    `refused` refused (one row of the CSVs, two lines of the NDJSON file)."""
    people = tmp / "people.csv"
    columns = "external_id,email,phone,first_name,last_name,birth_date,postal_address"
    columns += ",postcode,city,country,consent.marketing.email"
    columns += ",consent.marketing.email.wording_id"

    def row(c: Canary, bad: str = "") -> str:
        values = (c.external_id, c.email + bad, c.phone(1), c.first_name, c.last_name)
        values += (c.birth_date + bad, f'"{c.address}"', c.postcode, c.city, "RU")
        return ",".join(values) + ",granted,nl-v3"

    people.write_text(f"{columns}\n{row(ok)}\n{row(refused, '!x')}\n")
    lines = tmp / "people.ndjson"
    record = refused.record(birth_date="x", **{refused.email: 1})
    record.pop("source")
    lines.write_text(json.dumps(record, ensure_ascii=False) + "\n{" + refused.email + "\n")
    orders = tmp / "orders.csv"
    orders.write_text(
        "event_id,type,occurred_at,email,phone,amount,currency\n"
        f"e1,purchase,2026-11-02T10:00:00Z,{ok.email},,5.00,RUB\n"
        f"e2,purchase,{refused.birth_date},{refused.email},{refused.phone(0)},x,RUB\n"
    )
    return people, lines, orders


KEPT, ERASED, IMPORTED, REFUSED, UNSEEN = (
    Canary("K", False),
    Canary("E", True),
    Canary("I", True),
    Canary("R", False),
    Canary("U", True),
)


async def test_canaries_planted_everywhere_turn_up_only_where_they_may(
    platform, client, keys, receiver, caplog, tmp_path
):
    """Every kind of personal data, through every way in (a record, a batch with a refused
    record, events, consents with evidence, opt-outs, an SMS stop, a DSR with a note, a manage
    link, `cdp import` CSV and NDJSON with refused rows, `cdp events import`), then merges, an
    unmerge, an erasure, an access export, webhook dispatch and a master key rotation: no
    canary in any log line, error answer or header, webhook payload without include_address,
    rejects file, the raw database or key store (city and traits aside, stored plainly for
    segments); and of the erased customer nothing at all, nor their data key's halves."""
    await subscribe(client, keys, receiver)  # include_address false
    errors: list[str] = []  # error answers and every answer's headers

    async def call(method: str, path: str, role: str = "admin", **kw: Any) -> httpx.Response:
        headers = {**keys[role], **kw.pop("headers", {})}
        r = await client.request(method, path, headers=headers, **kw)
        assert r.status_code < 500, (path, r.text)
        errors.append(repr(dict(r.headers)))
        if r.status_code >= 400:
            errors.append(r.text)
        return r

    with everything_said(caplog) as said:
        kept = (await call("POST", "/v1/profiles", "ingest", json=KEPT.record(0))).json()
        bad = ERASED.record(1, birth_date=ERASED.birth_date + "x", phone=ERASED.phone(1) + "99")
        r = await call(
            "POST",
            "/v1/profiles/batch",
            "ingest",
            json={"records": [ERASED.record(1), bad]},
        )
        errors.extend(repr(x["error"]) for x in r.json()["results"] if "error" in x)
        erased = r.json()["results"][0]["profile_id"]
        first_key = await wrapped_keys(platform, [erased])  # the unmerge below replaces it
        # a second profile of the erased customer, by a new email, then linked: a merge
        other = {"source": "shop", "email": "qze2." + ERASED.email, "first_name": ERASED.first_name}
        await call("POST", "/v1/profiles", "ingest", json=other)
        r = await call(
            "POST",
            "/v1/profiles",
            "ingest",
            json={"source": "shop", "email": other["email"], "phone": ERASED.phone(2)},
        )
        assert r.json()["merged_profile_ids"], r.text
        await call("POST", f"/v1/profiles/{erased}/unmerge")
        event = {"source": "shop", "type": "purchase", "occurred_at": "2026-11-01T12:00:00Z"}
        event |= {"amount": "10.00", "currency": "RUB", "category": "shoes"}
        await call(
            "POST",
            "/v1/events",
            "ingest",
            json=event
            | {"event_id": f"o-{ERASED.email}", "phone": ERASED.phone(3)}
            | {"properties": {"gift_for": ERASED.last_name, "ship_to": ERASED.address}},
        )
        await call(
            "POST",
            "/v1/events",
            "ingest",
            json=event | {"event_id": "o-2", "external_id": KEPT.external_id, "source": "crm"},
        )
        consent = {"purpose": "marketing", "channel": "email", "status": "granted"}
        consent |= {"source": "web", "occurred_at": "2026-11-20T09:00:00Z"}
        await call(
            "POST",
            "/v1/consents",
            "ingest",
            json=consent | {"email": ERASED.email, "evidence": ERASED.evidence()},
        )
        await call(
            "POST",
            "/v1/consents",
            "ingest",
            json=consent | {"email": KEPT.email, "purpose": "nope", "evidence": KEPT.evidence()},
        )
        await call("POST", "/v1/opt-outs", "ingest", json={"email": KEPT.email, "source": "crm"})
        await call("POST", "/v1/opt-outs", "ingest", json={"email": UNSEEN.email, "source": "crm"})
        await call(
            "POST",
            "/v1/opt-outs",
            "ingest",
            json={"phone": UNSEEN.phone(1), "source": "crm", "channel": "sms"},
        )
        sms = {"from": ERASED.phone(2), "text": f"STOP {ERASED.first_name}"}
        await call("POST", "/v1/inbound/sms", "ingest", json=sms)
        for query in (
            {"email": KEPT.email},
            {"phone": KEPT.phone(3)},
            {"source": "crm", "external_id": KEPT.external_id},
            {"email": REFUSED.email},  # 404
            {"email": REFUSED.email + "@"},  # 400
        ):
            await call("GET", "/v1/profiles", params=query)
        await call("GET", "/v1/audit/consent-events", "compliance", params={"email": KEPT.email})
        link = await call("POST", "/v1/preference-links", "ingest", json={"email": KEPT.email})
        token = link.json()["token"]
        errors.append(repr(dict((await client.get(f"/preferences/{token}")).headers)))
        await call("POST", "/v1/access-requests", "compliance", json={"email": KEPT.email})
        # both halves of both their keys: the first, and the one the unmerge gave the holder
        halves = first_key + await wrapped_keys(platform, [erased])
        halves += await key_shares_of(platform, erased)
        assert len(set(halves)) == 4
        note = f"{ERASED.first_name} {ERASED.last_name} phoned from {ERASED.phone(0)}"
        await call(
            "POST",
            "/v1/erasure-requests",
            "compliance",
            json={"email": ERASED.email, "requested_by": "customer", "note": note},
        )
        await call(
            "POST",
            "/v1/erasure-requests",
            "compliance",
            json={"email": REFUSED.email, "requested_by": "customer", "note": REFUSED.last_name},
        )
        await call("POST", "/v1/profiles", "marketing", json=REFUSED.record())  # 403
        await call("POST", "/v1/profiles", "ingest", json=REFUSED.record(country="ZZ"))
        await call(
            "POST",
            "/v1/profiles",
            "ingest",
            content=json.dumps(REFUSED.record())[:-3],
            headers={"content-type": "application/json"},
        )
        # the bulk ways in, with refused rows naming REFUSED
        people, lines, orders = bulk_files(tmp_path, IMPORTED, REFUSED)
        summaries = [
            await run_import(platform, people, "crm", workers=0),
            await run_import(platform, lines, "crm", workers=0),
            await run_event_import(platform, orders, "shop"),
        ]
        assert summaries[0].created == 1 and summaries[0].rejected_rows == 1
        assert summaries[1].rejected_rows == 2 and summaries[2].rejected_rows == 1
        # what runs behind the API: the erasure, the dispatcher, a master key rotation
        await run_pending(platform)  # the erasure, if the request's own task has not
        await drain(platform)
        new_master = MasterKey.from_base64(MasterKey.generate_base64())
        assert await rotate_master_key(platform.db, platform.keys.master, new_master) > 0
    assert len(receiver.requests) > 5

    everyone = (KEPT, ERASED, IMPORTED, REFUSED, UNSEEN)
    for c in everyone:
        values = c.forms() | c.plain()
        for text in said:
            assert not found(text, values), (c.tag, found(text, values), text[:300])
        for text in errors:
            assert not found(text, values), (c.tag, found(text, values), text[:300])
        for sent in receiver.requests:
            assert not found(sent.body + repr(sent.headers).encode(), values), c.tag
        for s in summaries:
            assert not found(s.rejects_path.read_bytes(), values), (c.tag, s.rejects_path)
            assert owner_only(s.rejects_path)
    database = await raw_database_bytes(platform)
    store = await raw_key_store_bytes(platform)
    for c in everyone:
        assert not found(database, c.forms()), (c.tag, found(database, c.forms()))
        assert not found(store, c.forms() | c.plain()), c.tag
    assert found(database, KEPT.plain()) == ["city", "trait"]  # the check can see
    # of the erased customer, nothing: not the city, not a trait, not a half of their key
    assert not found(database, ERASED.plain())
    everything = (database + store).lower()
    kept_halves = [i for i, half in enumerate(halves) if found(everything, {"h": half.hex()})]
    kept_halves += [i for i, half in enumerate(halves) if half in database + store]
    assert not kept_halves  # 0, 1: the database's halves (first key, second); 2, 3: the store's
    assert await key_shares_of(platform, kept["profile_id"])  # the check can see
    r = await client.get(f"/v1/profiles/{erased}", headers=keys["admin"])
    assert r.status_code == 410


async def test_no_cli_command_repeats_a_canary(platform, tmp_path):
    """`cdp import` (CSV and NDJSON, with refused rows), `cdp events import` and `cdp keys
    rotate-master`, as processes: neither stdout nor stderr (structlog's lines, the progress
    bar, the summary, an error) names any of the values; the rejects files are owner-only."""
    url = platform.settings.database_url
    people, lines, orders = bulk_files(tmp_path, IMPORTED, REFUSED)
    with umask(0o022):
        runs = [
            run_cli(["import", str(people), "--source", "crm"], url, tmp_path),
            run_cli(["import", str(lines), "--source", "crm"], url, tmp_path),
            run_cli(["events", "import", str(orders), "--source", "shop"], url, tmp_path),
            run_cli(
                ["keys", "rotate-master", "--new-key-env", "CDP_NEW_MASTER_KEY"],
                url,
                tmp_path,
                CDP_NEW_MASTER_KEY=MasterKey.generate_base64(),
            ),
        ]
    for run in runs:
        assert run.returncode == 0, run.stderr
    assert "created: 1" in runs[0].stdout and "rejected rows: 1" in runs[0].stdout
    assert "rejected rows: 2" in runs[1].stdout and "rejected rows: 1" in runs[2].stdout
    for c in (IMPORTED, REFUSED):
        values = c.forms() | c.plain()
        for run in runs:
            assert not found(run.stdout + run.stderr, values), (c.tag, run.args)
        for path in (people, lines, orders):
            rejects = path.with_name(path.name + ".rejects.csv")
            assert not found(rejects.read_bytes(), values), (c.tag, rejects)
            assert owner_only(rejects)


def as_copied(p: Platform) -> bytes:
    """The SQLite database file and its -wal as a copy taken now would hold them (while the
    platform, as a running service would, holds the database open; no checkpoint first)."""
    path = Path(p.settings.database_url.split(":///", 1)[1])
    wal = path.with_name(path.name + "-wal")
    return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


async def test_a_master_key_rotation_leaves_no_key_wrapped_under_the_old_one_on_disk(
    platform, client, keys, backend
):
    """A rotation is for a master key that may have leaked: afterwards a copy of the database
    must hold no key wrapped under it. On SQLite the -wal file kept every data key's database
    half and the key ring's roots as wrapped under the old key, for as long as any process
    (a running `cdp serve`, here the test's platform) held the database open."""
    if backend != "sqlite":
        pytest.skip("PostgreSQL writes no -wal file beside the database")
    from cdp.db.tables import keyring, profile_keys

    for n in range(20):
        record = {"source": "crm", "email": f"qz.rotation{n}@example.org"}
        r = await client.post("/v1/profiles", json=record, headers=keys["ingest"])
        assert r.status_code == 201, r.text
    async with platform.db.read() as conn:
        old = [bytes(w) for (w,) in await conn.execute(select(profile_keys.c.wrapped))]
        old += [bytes(w) for (w,) in await conn.execute(select(keyring.c.wrapped))]
    new = MasterKey.from_base64(MasterKey.generate_base64())
    assert await rotate_master_key(platform.db, platform.keys.master, new) == 20
    on_disk = as_copied(platform)
    assert len(old) == 22
    assert not [n for n, wrapped in enumerate(old) if wrapped in on_disk]


async def test_splitting_whole_keys_leaves_no_whole_key_on_disk(platform, client, keys, backend):
    """`cdp keys split` is there so that a copy of the database alone cannot read a customer
    once erased; on SQLite the -wal file kept each key as it was stored before, whole (needing
    only the master key), for as long as any process held the database open: a copy taken
    then read the customer after their erasure."""
    if backend != "sqlite":
        pytest.skip("PostgreSQL writes no -wal file beside the database")
    from cdp.db.tables import profile_keys
    from cdp.keyring import split_whole_keys
    from tests.test_key_store import store_whole

    record = {"source": "crm", "email": "qz.whole@example.org"}
    r = await client.post("/v1/profiles", json=record, headers=keys["ingest"])
    pid = uuid.UUID(r.json()["profile_id"])
    await store_whole(platform, pid)
    async with platform.db.read() as conn:
        whole = (await conn.execute(select(profile_keys.c.wrapped))).scalar_one()
    assert await split_whole_keys(platform.db, platform.keys.master, platform.keys.store) == 1
    on_disk = as_copied(platform)
    assert whole not in on_disk


async def test_sealing_event_ids_leaves_no_plain_id_on_disk(platform, client, keys, backend):
    """`cdp events seal` encrypts the event ids an older release kept as sent (`o-<email>`...);
    on SQLite the database file kept each page as it was, the plain ids in it, until the next
    checkpoint: a copy of the file and its -wal taken meanwhile held them."""
    if backend != "sqlite":
        pytest.skip("PostgreSQL writes no -wal file beside the database")
    from sqlalchemy import update

    from cdp.db.tables import events
    from cdp.event_ids import event_key, seal_plain_ids

    order = f"o-{KEPT.email.lower()}-1"
    event = {"source": "shop", "event_id": order, "type": "purchase", "email": KEPT.email}
    event |= {"occurred_at": "2026-11-01T12:00:00Z", "amount": "1.00", "currency": "RUB"}
    r = await client.post("/v1/events", json=event, headers=keys["ingest"])
    assert r.status_code == 201, r.text
    async with platform.db.write() as conn:  # as an older release stored it
        key = event_key(platform.keys.indexer, "shop", order)
        plain = {"event_id": order, "event_key": None, "event_ref": None, "key_id": None}
        await conn.execute(update(events).where(events.c.event_key == key).values(**plain))
    assert await platform.db.purge_wal()
    assert found(as_copied(platform), KEPT.forms()) == ["email"]  # the check can see
    assert await seal_plain_ids(platform.db, platform.keys) == 1
    on_disk = as_copied(platform)
    assert not found(on_disk, KEPT.forms())


async def test_a_5xx_whose_exception_names_the_value_says_nothing_of_it(
    platform, client, keys, caplog, monkeypatch
):
    """An unexpected failure deep in a write (here the field encryption raising an exception
    that names the plaintext, as a library may) answers 500 without the value, and neither
    the log nor a traceback printed anywhere repeats it; nothing is stored."""
    from cdp.crypto.fields import FieldCipher

    def failing(self, place, plaintext, nonce=None):  # type: ignore[no-untyped-def]
        raise ValueError(f"cannot encrypt {plaintext!r} for {place}")

    monkeypatch.setattr(FieldCipher, "encrypt", failing)
    with everything_said(caplog) as said:
        r = await client.post("/v1/profiles", json=REFUSED.record(), headers=keys["ingest"])
    assert r.status_code == 500
    for text in [r.text, repr(dict(r.headers)), *said]:
        assert not found(text, REFUSED.forms() | REFUSED.plain()), text[:300]
    assert not found(await raw_database_bytes(platform), REFUSED.forms() | REFUSED.plain())
