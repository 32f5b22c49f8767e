"""Nothing is lost silently through the API either: a batch answers one result per record, in
order, each stored or with its error; an event is recorded (201), already recorded (200), or
refused (400) having stored nothing, and never a 500. Bodies are generated (hypothesis)."""

from __future__ import annotations

import itertools
import unicodedata

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdp.db.tables import events, profiles
from cdp.profiles.records import TRAIT_NAMED_TWICE
from tests.helpers import count, hypothesis_on_loop

_ids = itertools.count()
SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
KINDS = ("good", "bad_email", "bad_phone", "nul", "no_id", "unknown", "long", "bad_traits")
RECORD = st.sampled_from([*KINDS, "good", "bad_consent", "empty"])


def record(kind: str) -> tuple[dict, bool]:
    """A batch record, and whether it must be stored."""
    n = next(_ids)
    good = {"source": "crm", "external_id": f"B-{n}", "email": f"Batch.{n}@Example.com"}
    bad: dict = {
        "bad_email": {"email": f"batch-{n}"},
        "bad_phone": {"phone": "+7 916"},
        "nul": {"first_name": "Анна\x00"},
        "no_id": {"external_id": None, "email": None, "first_name": "Анна"},
        "unknown": {"comment": "x"},
        "long": {"first_name": "Я" * 201},
        "bad_traits": {"traits": {"": 1}},
        "empty": {"source": ""},
    }
    if kind == "good":
        return good, True
    if kind == "bad_consent":  # the record is stored; its grant alone is refused
        grant = {"purpose": "marketing", "channel": "email", "status": "granted"}
        return {**good, "consents": [grant]}, False
    return {**good, **bad[kind]}, False


async def batch_accounts(client, keys, kinds: list[str]) -> int:  # type: ignore[no-untyped-def]
    records = [record(kind) for kind in kinds]
    r = await client.post(
        "/v1/profiles/batch", json={"records": [r for r, _ in records]}, headers=keys["ingest"]
    )
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [item["index"] for item in results] == list(range(len(records)))
    for item, (body, stored) in zip(results, records, strict=True):
        assert ("profile_id" in item) != ("error" in item), item
        if stored:
            assert "profile_id" in item, item
            found = await client.get(
                "/v1/profiles", params={"email": body["email"]}, headers=keys["admin"]
            )
            assert found.status_code == 200 and found.json()["profile_id"] == item["profile_id"]
    return sum(item.get("created", False) for item in results)


async def test_a_batch_answers_each_record_once_in_order(platform, client, keys):
    def test(run) -> None:  # type: ignore[no-untyped-def]
        @SETTINGS
        @given(st.lists(RECORD, max_size=6))
        def example(kinds: list[str]) -> None:
            before = run(count(platform, profiles))
            created = run(batch_accounts(client, keys, kinds))
            assert run(count(platform, profiles)) - before == created

        example()

    await hypothesis_on_loop(test)


AMOUNT = st.one_of(
    st.none(),
    st.decimals(allow_nan=False, allow_infinity=False, places=2, max_value=10**6, min_value=0),
    st.sampled_from(["NaN", "Infinity", "-1", "1e30", "0.001", "123456789012345678901.5"]),
).map(lambda d: d if d is None or isinstance(d, str) else str(d))


async def event_accounts(client, keys, platform, amount, repeat: bool, type_: str) -> None:  # type: ignore[no-untyped-def]
    n = next(_ids)
    body = {
        "source": "shop",
        "event_id": f"ord-{n}",
        "type": type_,
        "occurred_at": "2026-11-01T12:00:00Z",
        "email": f"Event.{n}@Example.com",
        "category": "shoes",
    }
    if amount is not None:
        body.update(amount=amount, currency="RUB")
    before = await count(platform, events)
    r = await client.post("/v1/events", json=body, headers=keys["ingest"])
    assert r.status_code in (201, 400), r.text
    if r.status_code == 400:
        assert await count(platform, events) == before, "a refused event stored something"
        assert r.json()["errors"], r.text
        return
    assert await count(platform, events) == before + 1
    if repeat:
        again = await client.post("/v1/events", json=body, headers=keys["ingest"])
        assert again.status_code == 200, again.text
        assert await count(platform, events) == before + 1


async def test_an_event_is_recorded_once_or_refused_storing_nothing(platform, client, keys):
    def test(run) -> None:  # type: ignore[no-untyped-def]
        @SETTINGS
        @given(AMOUNT, st.booleans(), st.sampled_from(["purchase", "Purchase ", "view", "x" * 65]))
        def example(amount, repeat: bool, type_: str) -> None:  # type: ignore[no-untyped-def]
            run(event_accounts(client, keys, platform, amount, repeat, type_))

        example()

    await hypothesis_on_loop(test)


async def test_a_body_naming_a_key_twice_is_refused_storing_nothing(platform, client, keys):
    """A JSON decoder keeps the last of two values: the work address was dropped without a
    word and the profile stored with the home one only."""
    body = '{"source": "crm", "email": "work@example.com", "email": "home@example.com"}'
    for path, text, key in (
        ("/v1/profiles", body, "email"),
        ("/v1/profiles/batch", '{"records": [' + body + "]}", "email"),
        ("/v1/events", '{"source": "shop", "event_id": "e1", "event_id" : "e2"}', "event_id"),
    ):
        r = await post_text(client, keys, path, text)
        assert r.status_code == 400, r.text
        message = f"names the key {key!r} twice (one of its values would be lost)"
        assert r.json()["errors"] == [{"field": "body", "message": message}]
    assert await count(platform, profiles) == 0
    text = '{"source": "crm", "email": "z@example.com", "city": "Omsk \\": x"}'
    r = await post_text(client, keys, "/v1/profiles", text)  # '":' inside a value is no key
    assert r.status_code == 201, r.text


async def post_text(client, keys, path: str, text: str):  # type: ignore[no-untyped-def]
    headers = {**keys["ingest"], "content-type": "application/json"}
    return await client.post(path, content=text, headers=headers)


async def test_two_names_of_one_trait_are_refused_not_one_dropped(platform, client, keys):
    """`район` typed on Windows and on a Mac (`й` as one character, and as `и` with a
    combining breve) is one trait: one of the two values used to be dropped without a word."""
    composed, decomposed = "район", unicodedata.normalize("NFD", "район")
    assert composed != decomposed
    r = await client.post(
        "/v1/profiles",
        json={"source": "crm", "email": "t@example.com", "traits": {composed: 1, decomposed: 2}},
        headers=keys["ingest"],
    )
    assert r.status_code == 400, r.text
    [error] = r.json()["errors"]
    assert error["message"] == TRAIT_NAMED_TWICE
    assert await count(platform, profiles) == 0


SCALAR = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
JSON_VALUE = st.recursive(
    SCALAR,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
FIELDS = ["source", "email", "phone", "external_id", "first_name", "city", "country", "traits"]
ANY_RECORD = st.dictionaries(st.sampled_from([*FIELDS, "consents", "birth_date"]), JSON_VALUE)


async def test_a_batch_of_any_records_answers_each_once(platform, client, keys):
    def test(run) -> None:  # type: ignore[no-untyped-def]
        @SETTINGS
        @given(st.lists(ANY_RECORD, max_size=4))
        def example(records: list[dict]) -> None:
            body = {"records": [{"source": "crm", "external_id": "A", **r} for r in records]}
            r = run(client.post("/v1/profiles/batch", json=body, headers=keys["ingest"]))
            assert r.status_code == 200, r.text
            results = r.json()["results"]
            assert [item["index"] for item in results] == list(range(len(records)))
            assert all(("profile_id" in item) != ("error" in item) for item in results)

        example()

    await hypothesis_on_loop(test)
