"""No personal data in logs, error answers or exceptions: error paths are driven with
generated personal values (hypothesis), and everything said about them (every error body,
everything logged through structlog or logging, everything printed) is searched for the values
and their normalised forms (a lower-cased email, an E.164 phone, its national digits)."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.exc import OperationalError

from cdp.crypto.master import MasterKey
from cdp.import_file import ImportFileError
from cdp.importer import run_import
from consent.outbox.receiver import Receiver
from tests.helpers import hypothesis_on_loop, sql
from tests.test_import import run_cli
from tests.test_webhooks_delivery import FAST, drain, opt_out, subscribe

_ids = itertools.count()
SETTINGS = settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)


@dataclass(frozen=True)
class Person:
    first_name: str
    last_name: str
    local: str  # the email's local part, as written
    digits: str  # the phone's last 7 digits

    @property
    def email(self) -> str:
        return f"{self.local}@Example.org"

    @property
    def phone(self) -> str:  # as a Russian CRM writes it: national, with punctuation
        d = self.digits
        return f"8 (916) {d[:3]}-{d[3:5]}-{d[5:]}"

    def forms(self) -> list[str]:
        """Every form of the values that must not be repeated."""
        return [
            self.first_name,
            self.last_name,
            self.local,
            self.local.lower(),
            self.email.lower(),
            "916" + self.digits,  # in E.164 (+7916...) and national forms
            self.digits[:3] + "-" + self.digits[3:5],
        ]


CYRILLIC = st.text(alphabet="абвгдежзийклмнопрстуфхцчшщыэюя", min_size=5, max_size=8)
PEOPLE = st.builds(
    Person,
    first_name=CYRILLIC.map(lambda s: "Ж" + s),
    last_name=CYRILLIC.map(lambda s: "Щ" + s + "ова"),
    local=st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=6, max_size=10).map(
        lambda s: "Zq" + s.capitalize()
    ),
    digits=st.text(alphabet="0123456789", min_size=7, max_size=7),
)


def probes(p: Person) -> list[tuple[str, str, Any]]:
    """(method, path, JSON body or query) of requests that must fail, each naming `p`."""
    n = next(_ids)
    record = {"source": "crm", "email": p.email, "phone": p.phone, "first_name": p.first_name}
    return [
        ("POST", "/v1/profiles", {**record, "email": f"{p.local}@@example.org"}),
        ("POST", "/v1/profiles", {**record, "phone": p.phone + " 999"}),
        ("POST", "/v1/profiles", {**record, "country": p.last_name[:2]}),
        ("POST", "/v1/profiles", {**record, "first_name": p.first_name + "\x00"}),
        ("POST", "/v1/profiles", {**record, "city": f"{p.last_name} {p.email}"}),
        ("POST", "/v1/profiles", {**record, "traits": {p.email: p.last_name}}),
        ("POST", "/v1/profiles", {**record, p.email: p.last_name}),  # an object keyed by address
        ("POST", "/v1/profiles", {**record, "consents": [{p.phone: "granted"}]}),
        ("POST", "/v1/profiles", {**record, "traits": {"note": {"x": p.last_name}}}),
        ("POST", "/v1/profiles", {**record, "traits": {p.email: "\x00"}}),  # a NUL: a 400 too
        ("POST", "/v1/profiles/batch", {"records": [{**record, "traits": {p.phone: "\x00"}}]}),
        ("POST", "/v1/profiles", {**record, "birth_date": p.last_name}),
        ("POST", "/v1/profiles", {**record, "jurisdiction": p.last_name}),
        ("POST", "/v1/profiles", {**record, "last_name": p.last_name * 40}),
        ("POST", "/v1/profiles", {**record, "source": p.email * 5}),
        ("POST", "/v1/profiles", {**record, "consents": [{"status": p.first_name}]}),
        (
            "POST",
            "/v1/profiles",
            {**record, "consents": [{"purpose": p.last_name, "channel": p.phone}]},
        ),
        ("POST", "/v1/profiles/batch", {"records": [record, {**record, "email": p.local}]}),
        ("POST", "/v1/profiles/batch", {"records": [p.email]}),
        (
            "POST",
            "/v1/consents",
            {"email": p.email, "purpose": "marketing", "channel": "email", "status": "granted"},
        ),
        ("POST", "/v1/consents", {"phone": p.phone, "purpose": p.first_name, "channel": "sms"}),
        ("POST", "/v1/consents", {"email": p.email, "status": p.last_name}),
        (
            "POST",
            "/v1/events",
            {"source": "shop", "event_id": f"e-{n}", "type": "purchase", "email": p.email}
            | {"occurred_at": p.last_name, "amount": p.digits, "currency": p.first_name},
        ),
        (
            "POST",
            "/v1/events",
            {"source": "shop", "event_id": f"e-{n}", "type": "view", "email": p.local}
            | {"occurred_at": "2026-11-01T12:00:00Z"},
        ),
        (
            "POST",
            "/v1/events",
            {"source": "shop", "event_id": f"e-{n}", "type": "view", "email": p.email}
            | {"occurred_at": "2026-11-01T12:00:00Z", "properties": {p.email: "\x00"}},
        ),
        ("POST", "/v1/opt-outs", {"email": f"{p.local}@", "source": "crm"}),
        ("POST", "/v1/opt-outs", {"phone": p.phone, "source": "crm", "channel": p.last_name}),
        ("POST", "/v1/erasure-requests", {"email": p.email, "requested_by": p.first_name}),
        ("POST", "/v1/access-requests", {"email": p.email}),
        ("POST", "/v1/inbound/sms", {"from": p.phone + "0000", "text": p.first_name}),
        (
            "POST",
            "/v1/segments",
            {"name": p.last_name, "purpose": "marketing", "channel": "email"}
            | {"rules": {"field": "city", "op": p.first_name, "value": p.email}},
        ),
        (
            "POST",
            "/v1/segments/query",
            {"purpose": "marketing", "channel": "email"}
            | {"rules": {"field": f"traits.{p.email}", "op": "gt", "value": p.last_name}},
        ),
        ("GET", "/v1/profiles", {"email": p.email}),
        ("GET", "/v1/profiles", {"phone": p.phone}),
        ("GET", "/v1/profiles", {"email": p.local}),
        ("GET", "/v1/profiles", [("email", p.email), ("email", p.email.lower())]),
        ("GET", "/v1/profiles", {"email": p.email, "phone": p.phone}),
        ("GET", f"/v1/profiles/{p.email}", {}),
        ("GET", "/v1/audit/consent-events", {"email": p.email, "since": p.last_name}),
        ("GET", "/v1/audit/access-log", {p.email: "\x00"}),
        ("GET", f"/v1/unsubscribe/{p.email}", {}),
        ("POST", f"/v1/unsubscribe/{p.email}", {}),
        ("GET", f"/preferences/{p.local}", {}),
    ]


@contextlib.contextmanager
def everything_said(caplog):  # type: ignore[no-untyped-def]
    """What structlog and logging were told inside the block (a list to read afterwards)."""
    said: list[str] = []
    with structlog.testing.capture_logs() as events, caplog.at_level(logging.DEBUG):
        yield said
    said.extend(repr(event) for event in events)
    said.extend(
        f"{r.getMessage()} {r.exc_text or ''}"
        for r in caplog.records
        if r.name != "httpx"  # the test's own client, naming the URLs it asks
    )


async def fire(client, keys, person: Person) -> list[str]:  # type: ignore[no-untyped-def]
    answers = []
    for method, path, body in probes(person):
        if method == "GET":
            r = await client.get(path, params=body, headers=keys["admin"])
        else:
            r = await client.post(path, json=body, headers=keys["admin"])
        assert r.status_code < 500, (path, r.status_code)
        if r.status_code >= 400:  # an error answer; a batch's errors are inside a 200
            answers.append(r.text)
        elif path.endswith("/batch"):
            answers.extend(str(item) for item in r.json()["results"] if "error" in item)
    return answers


def assert_nothing_of(person: Person, said: list[str]) -> None:
    for text in said:
        for value in person.forms():
            assert value not in text, f"{value!r} in {text[:500]!r}"


async def test_no_error_answer_or_log_repeats_personal_data(platform, client, keys, caplog):
    def test(run) -> None:  # type: ignore[no-untyped-def]
        @SETTINGS
        @given(PEOPLE)
        def example(person: Person) -> None:
            caplog.clear()
            with everything_said(caplog) as said:
                answers = run(fire(client, keys, person))
            assert_nothing_of(person, answers)
            assert_nothing_of(person, said)

        example()

    await hypothesis_on_loop(test)


async def test_a_key_that_is_an_address_is_not_repeated(platform, client, keys, tmp_path):
    """Before, an unknown field was named as it was written: a JSON object keyed by a customer's
    address put the address in the 400 answer, and in the rejects file of `cdp import`, which
    holds no personal data."""
    r = await client.post(
        "/v1/profiles",
        json={"source": "crm", "email": "z1@example.com", "Zoya.K@Example.org": "VIP"},
        headers=keys["ingest"],
    )
    assert r.status_code == 400
    assert r.json()["errors"] == [{"field": "body", "message": "unknown field"}]
    src = tmp_path / "crm.ndjson"
    src.write_text(
        '{"email": "z2@example.com", "consents": [{"+7 916 555-01-77": "granted"}]}\n'
        '{"email": "z3@example.com", "zoya.k@example.org": 1, "zoya.k@example.org": 2}\n',
        "utf-8",
    )
    summary = await run_import(platform, src, "crm")
    rejects = summary.rejects_path.read_text("utf-8")
    assert rejects.splitlines()[1:] == [
        "1,consents[0].purpose,required",
        "1,consents[0].channel,required",
        "1,consents[0].status,required",
        "1,consents[0],unknown field",
        "2,row,names a key twice (one of its values would be lost)",
    ]
    header = tmp_path / "crm.csv"
    header.write_text("email,first_name,zoya.k@example.org\n", "utf-8")
    with pytest.raises(ImportFileError) as refused:
        await run_import(platform, header, "crm")
    assert "zoya" not in str(refused.value) and "1 column" in str(refused.value)


ZOYA = Person("Жзоя", "Щкузнецова", "ZqZoyaKuz", "5550177")


async def test_cdp_import_says_nothing_personal_when_it_fails(platform, tmp_path, backend):
    """Rejected rows, a header that is a row of data, a wrong master key, and an import that
    dies midway (the database refuses a write): stdout, stderr and the rejects file name lines,
    fields and reasons only."""
    if backend != "sqlite":
        return  # the CLI is the same code on both databases; the failure is made with SQLite
    url, p = platform.settings.database_url, ZOYA
    rows = tmp_path / "crm.csv"
    rows.write_text(
        "email;phone;first_name;city;consent.marketing.email;traits.note\n"
        f"{p.local}@;{p.phone};{p.first_name};;;\n"
        f"{p.email};{p.phone} доб;{p.first_name};;;\n"
        f"{p.email};{p.phone};{p.first_name};{p.last_name} {p.email};;\n"
        f"{p.email};{p.phone};{p.first_name};;{p.email};\n"
        f'{p.email};{p.phone};"{p.first_name}\x00";;;\n'
        f"{p.email};{p.phone};{p.last_name * 40};;;{p.email}\n",
        "utf-8",
    )
    data = tmp_path / "no_header.csv"
    data.write_text(f"{p.email};{p.first_name};{p.phone}\n", "utf-8")
    lines = tmp_path / "big.ndjson"
    lines.write_text(
        "".join(
            f'{{"email": "{p.local}.{i}@example.org", "first_name": "{p.first_name}",'
            f' "phone": "8 (916) {i:07d}"}}\n'
            for i in range(1500)
        ),
        "utf-8",
    )
    said = []
    for args, env in (
        (["import", str(rows), "--source", "crm"], {}),
        (["import", str(data), "--source", "crm"], {}),
        (["import", str(rows), "--source", "crm"], {"CDP_MASTER_KEY": MasterKey.generate_base64()}),
    ):
        done = run_cli(args, url, tmp_path, **env)
        said += [done.stdout, done.stderr]
    said.append((tmp_path / "crm.csv.rejects.csv").read_text("utf-8"))
    await sql(
        platform,
        "CREATE TRIGGER full_disk BEFORE INSERT ON profiles "
        "WHEN (SELECT count(*) FROM profiles) >= 1000 BEGIN SELECT RAISE(ABORT, 'disk full'); END",
    )
    died = run_cli(["import", str(lines), "--source", "crm"], url, tmp_path)
    assert died.returncode != 0 and "disk full" in died.stderr
    said += [died.stdout, died.stderr]
    assert_nothing_of(p, said)


async def test_a_500_a_413_or_a_broken_ciphertext_says_nothing_personal(
    platform, client, keys, caplog, capfd, monkeypatch, backend
):
    """An unexpected failure whose message holds a customer's data (as a driver's might), the
    database refusing a write, a body over the limit, and a profile whose ciphertext no longer
    authenticates: the answers and the log name no value (the log names the error's type)."""
    p = ZOYA
    r = await client.post(
        "/v1/profiles",
        json={"source": "crm", "email": p.email, "phone": p.phone, "first_name": p.first_name},
        headers=keys["ingest"],
    )
    profile_id = r.json()["profile_id"]

    async def failing(*args: object, **kwargs: object) -> None:
        raise RuntimeError(f"could not store {p.email.lower()} ({p.first_name}, +7916{p.digits})")

    answers = []
    with everything_said(caplog) as said:
        with monkeypatch.context() as patch:
            patch.setattr("api.controllers.profiles.upsert_one", failing)
            r = await client.post(
                "/v1/profiles", json={"source": "crm", "email": p.email}, headers=keys["ingest"]
            )
        assert r.status_code == 500
        answers.append(r.text)
        if backend == "sqlite":  # a constraint the database enforces (a trigger stands in)
            await sql(
                platform,
                "CREATE TRIGGER refuse BEFORE INSERT ON profiles BEGIN "
                "SELECT RAISE(ABORT, 'constraint failed'); END",
            )
            record = {"source": "crm", "email": f"2.{p.email}", "first_name": p.first_name}
            r = await client.post("/v1/profiles", json=record, headers=keys["ingest"])
            assert r.status_code == 500
            answers.append(r.text)
            await sql(platform, "DROP TRIGGER refuse")
        big = {"source": "crm", "email": p.email, "last_name": p.last_name * 1_000_000}
        r = await client.post("/v1/profiles", json=big, headers=keys["ingest"])
        assert r.status_code == 413
        answers.append(r.text)
        await sql(platform, "UPDATE profiles SET first_name = last_name WHERE first_name IS NULL")
        await sql(platform, "UPDATE profiles SET last_name = first_name")  # moved: fails its AAD
        r = await client.get(f"/v1/profiles/{profile_id}", headers=keys["admin"])
        assert r.status_code == 500
        answers.append(r.text)
    out, err = capfd.readouterr()
    assert_nothing_of(p, [*answers, *said, out, err])
    assert any("RuntimeError" in line for line in said)


@pytest.fixture
async def failing() -> AsyncIterator[Receiver]:
    receiver = Receiver(secret="")
    receiver.respond = lambda _req: 500
    await receiver.start()
    yield receiver
    await receiver.stop()


async def test_a_failing_webhook_says_nothing_personal(platform, client, keys, caplog, failing):
    """A receiver that fails until the delivery is dead (also one sent the address): the logs
    and the deliveries' status name ids and status codes only."""
    p, receiver = ZOYA, failing
    sub = await subscribe(client, keys, receiver, kinds=["opt_out"], include_address=True)
    with everything_said(caplog) as said:
        await opt_out(client, keys, email=p.email, channel="email")
        await drain(platform, dataclasses.replace(FAST, max_attempts=2))
        r = await client.get(f"/v1/webhooks/{sub['id']}/deliveries", headers=keys["admin"])
    assert [item["status"] for item in r.json()["items"]] == ["dead"]
    assert any("webhook_dead_letter" in line for line in said)
    assert_nothing_of(p, [*said, r.text])


async def test_a_failure_behind_a_link_does_not_log_its_token(
    platform, client, caplog, monkeypatch
):
    """The log of a 500 or a 503 (the database down) named the request's path, and a link's
    path is its token: a preference-centre link would have been a key to a customer's data in
    the log. It names the route instead."""
    token = "tok3n-ZqZoyaKuz-secret"
    for failure, status in (
        (RuntimeError("boom"), 500),
        (OperationalError("SELECT 1", {}, Exception("down")), 503),
    ):

        async def failing(*args: object, failure: Exception = failure) -> None:
            raise failure

        monkeypatch.setattr("api.controllers.consents.unsubscribe", failing)
        with everything_said(caplog) as said:
            r = await client.post(f"/v1/unsubscribe/{token}")
        assert r.status_code == status
        assert said and not any(token in line for line in said), said
        assert any("/v1/unsubscribe/{token" in line for line in said), said
