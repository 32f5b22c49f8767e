"""Write the upgrade fixture: a SQLite database built by an OLD RELEASE's own code, through its
own API, and what that release answered about it. tests/test_upgrade_from_release.py upgrades
a copy with this code and checks it.

    .venv/bin/python tests/upgrade_fixtures/make.py [COMMIT]   (default a0d1fb6, head 0004)

It checks COMMIT out in a temporary worktree, runs that release's `cdp migrate` and
`cdp demo --customers 30`, then this file again with the old code first on PYTHONPATH
(`--build`), which tells a story through the old API (merges, purchases with unnormalised
types and categories, grants with evidence, a withdrawal, opt-outs including one of an address
nobody holds, an unsubscribe link, an SMS STOP, a completed erasure whose address someone else
takes and opts out of, a merge undone, saved segments) and records the old answers. The result
is, for SQLite, tests/upgrade_fixtures/release-0004.sql (the database as SQL, from sqlite3's
iterdump) and release-0004.sqlite.json (the names of the story's people and the old answers);
for PostgreSQL (a scratch database on 127.0.0.1, user postgres, dropped afterwards),
release-0004.pg.sql (pg_dump --inserts, less what only psql reads) and release-0004.postgres.json.
In --build mode this file imports only what the old release has.

The master key below is the fixture's alone: a test key, nothing real is under it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import unicodedata
from datetime import UTC, datetime, timedelta
from pathlib import Path

MASTER_KEY = "dXBncmFkZS1maXh0dXJlLXRlc3Qta2V5LW5vLXJlYWw="  # base64 of 32 bytes, test only
HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
NAME = "release-0004"
EV = {"wording_id": "newsletter-v3", "method": "double_opt_in", "ip": "203.0.113.7"}
SMS_EV = {"wording_id": "sms-promo-v1", "method": "checkbox"}
SEGMENTS = {  # name: (purpose, channel, rules)
    "mkt_email": ("marketing", "email", {"field": "created_days", "op": "gte", "value": 0}),
    "mkt_sms": ("marketing", "sms", {"field": "created_days", "op": "gte", "value": 0}),
    "svc_email": ("service", "email", {"field": "created_days", "op": "gte", "value": 0}),
    "moscow_silver": (
        "marketing",
        "email",
        {
            "all": [
                {"field": "city", "op": "eq", "value": "Москва"},
                {"field": "traits.tier", "op": "eq", "value": "Серебряный"},
            ]
        },
    ),
    "shoes": ("marketing", "sms", {"field": "categories", "op": "contains", "value": "shoes"}),
}


def make(commit: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(old), commit], cwd=REPO, check=True
        )
        try:
            db = Path(tmp) / "cdp.db"
            _story(old, tmp, f"sqlite+aiosqlite:///{db}", "sqlite")
            with sqlite3.connect(db) as conn:
                conn.execute("DELETE FROM api_keys")  # the build's own keys: the test makes its own
                conn.commit()
                sql = "\n".join(conn.iterdump())
            (HERE / f"{NAME}.sql").write_text(sql + "\n", encoding="utf-8")
            name = f"upgrade_fixture_{os.getpid()}"
            _pg(f"CREATE DATABASE {name}")
            try:
                _story(old, tmp, f"postgresql+asyncpg://{PG_SERVER}/{name}", "postgres")
                _pg("DELETE FROM api_keys", name)
                dump = subprocess.run(
                    [*PG_DUMP, "-h", PG_HOST, "-U", "postgres", name],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                (HERE / f"{NAME}.pg.sql").write_text(pg_statements(dump), encoding="utf-8")
            finally:
                _pg(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=REPO)


PG_DUMP = ("pg_dump", "--inserts", "--no-owner", "--no-privileges", "--no-comments")
PG_HOST = "127.0.0.1"
PG_SERVER = f"postgres@{PG_HOST}:5432"


def _pg(sql: str, db: str = "postgres") -> None:
    subprocess.run(["psql", "-q", "-h", PG_HOST, "-U", "postgres", "-c", sql, db], check=True)


def _story(old: Path, tmp: str, url: str, backend: str) -> None:
    """The old release's own migrate, demo and the story (`--build`), on one database."""
    env = {
        **os.environ,
        "PYTHONPATH": str(old),
        "CDP_DATABASE_URL": url,
        "CDP_MASTER_KEY": MASTER_KEY,
        "CDP_DEV_KEY_DIR": str(Path(tmp) / "keys"),
        "UPGRADE_FIXTURE_OUT": str(HERE / f"{NAME}.{backend}.json"),
    }
    run = [sys.executable, "-m", "cdp.cli"]
    subprocess.run([*run, "migrate"], env=env, cwd=tmp, check=True)
    subprocess.run([*run, "demo", "--customers", "30"], env=env, cwd=tmp, check=True)
    subprocess.run([sys.executable, __file__, "--build"], env=env, cwd=tmp, check=True)


def pg_statements(dump: str) -> str:
    """pg_dump's SQL without what only psql or a newer server reads (SET lines, psql's
    backslash commands, comments): what one asyncpg `execute` runs on any supported server."""
    kept = [
        line
        for line in dump.splitlines()
        if line and not line.startswith(("--", "\\", "SET ", "SELECT pg_catalog.set_config("))
    ]
    return "\n".join(kept) + "\n"


# ---- --build: runs with the OLD release first on PYTHONPATH


def ago(days: float) -> str:
    return (datetime.now(UTC) - timedelta(days=days)).isoformat()


def grant(channel: str, days: float) -> dict:
    ev = EV if channel == "email" else SMS_EV
    return {
        "purpose": "marketing",
        "channel": channel,
        "status": "granted",
        "occurred_at": ago(days),
        "evidence": ev,
    }


async def members(c, h, sid: str) -> list[list[str]]:  # type: ignore[no-untyped-def]
    r = await c.get(f"/v1/segments/{sid}/members", params={"limit": 1000}, headers=h)
    assert r.status_code == 200 and not r.json()["next_cursor"], r.text[:300]
    return sorted([m["profile_id"], m["address"]] for m in r.json()["items"])


async def build() -> None:
    import httpx

    from api.app import create_app
    from cdp.apikeys import create_key
    from cdp.platform import open_platform
    from cdp.settings import Settings
    from consent.dsr.worker import run_pending

    p = await open_platform(Settings.from_env(), run_migrations=False)
    h = {}
    for role in ("admin", "ingest", "marketing", "compliance"):
        h[role] = {"Authorization": f"Bearer {await create_key(p.db, f'fixture-{role}', role)}"}
    transport = httpx.ASGITransport(app=create_app(platform=p))
    out: dict = {"people": {}, "segments": {}, "opted_out": []}
    people = out["people"]
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:

        async def post(path: str, body: dict, role: str = "ingest") -> dict:
            r = await c.post(path, json=body, headers=h[role])
            assert r.status_code in (200, 201, 202), (path, r.status_code, r.text[:300])
            return r.json()

        E = {
            n: f"{n}.fixture@example.com"
            for n in ("anna", "boris", "carla", "dmitry", "egor", "ghost")
        }
        out["emails"] = E
        # anna: a CRM record (city in capitals, a decomposed й) and a shop record, merged by a
        # call-centre record naming both; purchases with a type and categories as sent
        await post(
            "/v1/profiles",
            {
                "source": "crm",
                "external_id": "A-1",
                "email": E["anna"],
                "first_name": "Анна",
                "last_name": "Иванова",
                "city": "МОСКВА",
                "country": "RU",
                "traits": {"tier": unicodedata.normalize("NFD", "Серебряный")},
                "consents": [grant("email", 30)],
            },
        )
        await post(
            "/v1/profiles",
            {
                "source": "shop",
                "external_id": "S-A1",
                "phone": "+79160000001",
                "country": "RU",
                "consents": [grant("sms", 20)],
            },
        )
        m = await post(
            "/v1/profiles", {"source": "callcenter", "email": E["anna"], "phone": "+79160000001"}
        )
        people["anna"] = m["profile_id"]
        for i, (typ, amount, cur, cat) in enumerate(
            [("Purchase", "1000.00", "RUB", " Shoes "), ("purchase", "100.00", "USD", "SHOES")]
        ):
            await post(
                "/v1/events",
                {
                    "source": "shop",
                    "event_id": f"a-{i}",
                    "type": typ,
                    "occurred_at": ago(9 - i),
                    "email": E["anna"],
                    "amount": amount,
                    "currency": cur,
                    "category": cat,
                },
            )
        # boris: email and sms granted, sms withdrawn since
        b = await post(
            "/v1/profiles",
            {
                "source": "crm",
                "external_id": "B-1",
                "email": E["boris"],
                "phone": "+79160000002",
                "country": "RU",
                "consents": [grant("email", 40), grant("sms", 40)],
            },
        )
        people["boris"] = b["profile_id"]
        await post(
            "/v1/consents",
            {
                "email": E["boris"],
                "purpose": "marketing",
                "channel": "sms",
                "status": "withdrawn",
                "source": "web_form",
                "occurred_at": ago(5),
            },
        )
        await post(
            "/v1/events",
            {
                "source": "shop",
                "event_id": f"o-{E['boris']}",
                "type": "purchase",
                "occurred_at": ago(3),
                "email": E["boris"],
                "amount": "700.00",
                "currency": "RUB",
            },
        )
        # carla opts out of everything; ghost's address nobody holds is opted out
        cl = await post(
            "/v1/profiles",
            {
                "source": "crm",
                "external_id": "C-1",
                "email": E["carla"],
                "country": "RU",
                "consents": [grant("email", 50)],
            },
        )
        people["carla"] = cl["profile_id"]
        for who in ("carla", "ghost"):
            await post("/v1/opt-outs", {"email": E[who], "source": "support"})
            out["opted_out"].append(["email", E[who], "*"])
        # dmitry: erased; then nadia takes his address and opts out of everything
        d = await post(
            "/v1/profiles",
            {
                "source": "crm",
                "external_id": "D-1",
                "email": E["dmitry"],
                "phone": "+79160000004",
                "first_name": "Дмитрий",
                "last_name": "Петров",
                "country": "RU",
                "consents": [grant("email", 60), grant("sms", 60)],
            },
        )
        await post(
            "/v1/events",
            {
                "source": "shop",
                "event_id": f"o-{E['dmitry']}",
                "type": "purchase",
                "occurred_at": ago(8),
                "phone": "+79160000004",
                "amount": "900.00",
                "currency": "RUB",
            },
        )
        er = await post(
            "/v1/erasure-requests", {"email": E["dmitry"], "requested_by": "customer"}, "compliance"
        )
        await run_pending(p)
        r = await c.get(f"/v1/erasure-requests/{er['request_id']}", headers=h["compliance"])
        assert r.json()["status"] == "completed", r.text[:300]
        people["dmitry"] = d["profile_id"]
        out["dmitry_grant_day"] = ago(60)[:10]
        n = await post(
            "/v1/profiles",
            {
                "source": "shop",
                "external_id": "N-1",
                "email": E["dmitry"],
                "country": "RU",
                "consents": [grant("email", 0.001)],
            },
        )
        people["nadia"] = n["profile_id"]
        await post("/v1/opt-outs", {"email": E["dmitry"], "source": "web"})
        out["opted_out"].append(["email", E["dmitry"], "*"])
        # egor and fedor merged by mistake, a grant naming the merged profile, the merge undone
        e = await post(
            "/v1/profiles",
            {
                "source": "crm",
                "external_id": "E-1",
                "email": E["egor"],
                "country": "RU",
                "consents": [grant("email", 70)],
            },
        )
        f = await post(
            "/v1/profiles",
            {
                "source": "shop",
                "external_id": "F-1",
                "phone": "+79160000006",
                "country": "RU",
                "consents": [grant("sms", 70)],
            },
        )
        bm = await post(
            "/v1/profiles", {"source": "callcenter", "email": E["egor"], "phone": "+79160000006"}
        )
        await post(
            "/v1/consents",
            {
                "profile_id": bm["profile_id"],
                "purpose": "marketing",
                "channel": "sms",
                "status": "granted",
                "source": "app",
                "occurred_at": ago(1.5),
                "evidence": SMS_EV,
            },
        )
        await post(f"/v1/profiles/{bm['profile_id']}/unmerge", {}, "admin")
        people["egor"], people["fedor"] = e["profile_id"], f["profile_id"]
        for name, (purpose, channel, rules) in SEGMENTS.items():
            body = {"name": name, "purpose": purpose, "channel": channel, "rules": rules}
            out["segments"][name] = (await post("/v1/segments", body, "marketing"))["id"]
        # a demo customer unsubscribes by link, another is opted out of sms, a third sends STOP
        mk = h["marketing"]
        first = (
            await c.get(f"/v1/segments/{out['segments']['mkt_email']}/members", headers=mk)
        ).json()
        unsub = next(i for i in first["items"] if not i["address"].endswith(".fixture@example.com"))
        r = await c.post(f"/v1/unsubscribe/{unsub['unsubscribe_token']}")
        assert r.status_code == 200, r.text[:300]
        out["opted_out"].append(["email", unsub["address"], "email"])
        sms = (await c.get(f"/v1/segments/{out['segments']['mkt_sms']}/members", headers=mk)).json()
        demo = [i for i in sms["items"] if i["address"] not in ("+79160000001", "+79160000006")]
        await post(
            "/v1/opt-outs", {"phone": demo[0]["address"], "channel": "sms", "source": "support"}
        )
        r = await c.post(
            "/v1/inbound/sms",
            json={"from": demo[1]["address"], "text": "стоп"},
            headers=h["ingest"],
        )
        assert r.status_code == 200, r.text[:300]
        out["opted_out"] += [
            ["phone", demo[0]["address"], "sms"],
            ["phone", demo[1]["address"], "sms"],
        ]
        # what this release answers
        old: dict = {"segments": {}, "profiles": {}}
        for name, sid in out["segments"].items():
            old["segments"][name] = await members(c, mk, sid)
        for who, pid in people.items():
            r = await c.get(f"/v1/profiles/{pid}", headers=h["compliance"])
            body = r.json() if r.status_code == 200 else None
            keep = ("city", "traits", "stats", "jurisdiction", "first_name", "last_name")
            old["profiles"][who] = [r.status_code, body and {k: body.get(k) for k in keep}]
        r = await c.get("/v1/audit/verify", headers=h["compliance"])
        old["verify"] = {k: r.json()[k] for k in ("ok", "entries", "head_hash")}
        r = await c.post(
            "/v1/access-requests", json={"profile_id": people["nadia"]}, headers=h["compliance"]
        )
        old["nadia_export_has_dmitry_grant"] = out["dmitry_grant_day"] in r.text
        out["old"] = old
    await p.close()
    with open(os.environ["UPGRADE_FIXTURE_OUT"], "w", encoding="utf-8") as fh:
        json.dump(out, fh, indent=1, sort_keys=True, ensure_ascii=False)


if __name__ == "__main__":
    if sys.argv[1:] == ["--build"]:
        asyncio.run(build())
    else:
        make(sys.argv[1] if len(sys.argv) > 1 else "a0d1fb6")
