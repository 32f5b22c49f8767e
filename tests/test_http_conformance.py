"""The HTTP surface as a client written against API.md meets it: the headers HTTP requires of
an error, the methods every path answers, media types, and an OpenAPI document that says what
the service really sends."""

from __future__ import annotations

from http import HTTPStatus

import jsonschema_rs

from consent.tables import consent_ledger
from tests.helpers import count

PROBLEM = "application/problem+json"
WITHDRAWAL = {
    "email": "anna@example.com",
    "purpose": "marketing",
    "channel": "email",
    "status": "withdrawn",
    "source": "web_form",
}


async def test_a_form_body_where_json_is_expected_is_400_naming_the_body_and_stores_nothing(
    platform, client, keys
):
    """A multipart body was read as a form by the NUL check, after which the JSON decoder found
    the stream consumed: a 500."""
    form = {"email": "anna@example.com", "purpose": "marketing"}
    for sent in ({"files": {"file": ("a.json", b"{}")}, "data": form}, {"data": form}):
        r = await client.post("/v1/consents", headers=keys["ingest"], **sent)
        assert r.status_code == 400, r.text
        assert r.headers["content-type"] == PROBLEM
        assert [e["field"] for e in r.json()["errors"]] == ["body"]
    assert await count(platform, consent_ledger) == 0
    r = await client.post("/v1/consents", headers=keys["ingest"], json=WITHDRAWAL)
    assert r.status_code == 201


async def test_a_401_asks_for_a_bearer_key(client, keys):
    """RFC 9110 §11.6.1: a 401 carries WWW-Authenticate, naming the scheme to use."""
    for headers in ({}, {"Authorization": "Bearer cdp_never-issued"}, {"Authorization": "Basic x"}):
        r = await client.get("/v1/segments", headers=headers)
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert r.headers["content-type"] == PROBLEM
    r = await client.get("/v1/segments", headers=keys["ingest"])  # known key, wrong role
    assert r.status_code == 403
    assert "www-authenticate" not in r.headers


async def test_a_405_names_the_methods_the_path_allows(client, keys):
    """RFC 9110 §15.5.6: a 405 carries Allow."""
    r = await client.put("/health")
    assert r.status_code == 405
    assert r.headers["content-type"] == PROBLEM
    assert "GET" in r.headers["allow"].split(", ")
    r = await client.put("/v1/segments", headers=keys["marketing"], json={})
    assert r.status_code == 405
    assert {"GET", "POST"} <= set(r.headers["allow"].split(", "))


async def test_options_tells_any_caller_every_method_of_the_path(client, keys):
    """OPTIONS reveals only what the OpenAPI document publishes. The fail-closed role check
    refused it (401 without a key, 403 to a marketing key on the marketing endpoints), and
    Litestar's Allow missed the methods registered after the first (GET /v1/segments)."""
    for headers in ({}, keys["marketing"], keys["ingest"]):
        r = await client.options("/v1/segments", headers=headers)
        assert r.status_code == 204, r.text
        assert r.headers["allow"] == "GET, OPTIONS, POST"
        assert r.content == b""
    r = await client.options("/v1/segments/01900000-0000-7000-8000-000000000000")
    assert r.headers["allow"] == "DELETE, GET, OPTIONS"
    r = await client.options("/v1/unsubscribe/any-token")
    assert r.headers["allow"] == "GET, HEAD, OPTIONS, POST"  # HEAD: mail scanners send it


async def _segment(client, keys) -> str:  # type: ignore[no-untyped-def]
    r = await client.post(
        "/v1/profiles",
        headers=keys["ingest"],
        json={
            "source": "crm",
            "email": "anna@example.com",
            "country": "RU",
            "consents": [
                {
                    "purpose": "marketing",
                    "channel": "email",
                    "status": "granted",
                    "evidence": {"wording_id": "newsletter-v3", "method": "double_opt_in"},
                }
            ],
        },
    )
    assert r.status_code == 201, r.text
    rules = {"field": "country", "op": "eq", "value": "RU"}
    definition = {"name": "ru", "purpose": "marketing", "channel": "email", "rules": rules}
    r = await client.post("/v1/segments", headers=keys["marketing"], json=definition)
    assert r.status_code == 201, r.text
    return r.json()["id"]


async def test_an_export_names_its_media_type_once(client, keys):
    """The CSV export said `text/csv; charset=utf-8; charset=utf-8` (the framework adds the
    charset to a text type), which strict parsers refuse."""
    sid = await _segment(client, keys)
    r = await client.get(f"/v1/segments/{sid}/export?format=csv", headers=keys["marketing"])
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/csv; charset=utf-8"
    assert "anna@example.com" in r.text.splitlines()[1]
    r = await client.get(f"/v1/segments/{sid}/export", headers=keys["marketing"])
    assert r.headers["content-type"] == "application/x-ndjson"


async def test_the_openapi_document_says_what_an_export_and_an_unsubscribe_take_and_send(
    client,
):
    """The export was documented as answering `application/json` with a free-text `format`,
    and the one-click unsubscribe as taking no body (RFC 8058 posts a form)."""
    paths = (await client.get("/schema/openapi.json")).json()["paths"]
    export = paths["/v1/segments/{segment_id}/export"]["get"]
    assert set(export["responses"]["200"]["content"]) == {"application/x-ndjson", "text/csv"}
    (fmt,) = [p for p in export["parameters"] if p["name"] == "format"]
    assert fmt["schema"]["enum"] == ["ndjson", "csv"]
    assert fmt["schema"]["default"] == "ndjson"
    body = paths["/v1/unsubscribe/{token}"]["post"]["requestBody"]
    assert body["required"] is False
    form = body["content"]["application/x-www-form-urlencoded"]["schema"]
    assert form["properties"]["List-Unsubscribe"]["enum"] == ["One-Click"]


async def test_a_query_parameter_given_twice_is_400_naming_it(platform, client, keys):
    """The last value won without a word: two emails read the second one's profile."""
    from cdp.db.tables import access_log

    for email in ("a@example.com", "b@example.com"):
        r = await client.post(
            "/v1/profiles", headers=keys["ingest"], json={"source": "crm", "email": email}
        )
        assert r.status_code == 201
    logged = await count(platform, access_log)
    r = await client.get(
        "/v1/profiles?email=a@example.com&email=b@example.com", headers=keys["compliance"]
    )
    assert r.status_code == 400
    assert r.headers["content-type"] == PROBLEM
    assert [e["field"] for e in r.json()["errors"]] == ["email"]
    assert "a@example.com" not in r.text and "b@example.com" not in r.text
    assert await count(platform, access_log) == logged  # nothing read, nothing logged
    r = await client.get(
        "/v1/audit/consent-events?purpose=marketing&purpose=service&limit=5&limit=6",
        headers=keys["compliance"],
    )
    assert {e["field"] for e in r.json()["errors"]} == {"purpose", "limit"}
    r = await client.get("/v1/segments?utm=a&utm=b", headers=keys["marketing"])  # not taken
    assert r.status_code == 200


async def test_health_answers_head_as_uptime_monitors_send_it(client):
    """RFC 9110 §9.3.2; HEAD /health was a 405, which a monitor reads as the service down."""
    for path in ("/health", "/health/live"):
        r = await client.head(path)
        assert r.status_code == 200, path
        assert r.content == b""
        got = await client.get(path)  # HEAD says what GET would send (RFC 9110 §8.6)
        assert r.headers["content-length"] == str(len(got.content))
        assert r.headers["content-type"] == got.headers["content-type"]
        assert "HEAD" in (await client.options(path)).headers["allow"].split(", ")


async def test_a_currency_code_is_asked_for_in_plain_words(client, keys):
    """The message was msgspec's, quoting its regular expression."""
    event = {
        "source": "shop",
        "event_id": "ord-1",
        "type": "purchase",
        "occurred_at": "2026-11-01T12:00:00Z",
        "email": "anna@example.com",
        "amount": "10.00",
        "currency": "rub",
    }
    r = await client.post("/v1/events", json=event, headers=keys["ingest"])
    assert r.status_code == 400
    assert r.json()["errors"] == [
        {"field": "currency", "message": "expected an ISO 4217 code in capitals (RUB)"}
    ]


async def test_the_openapi_document_bounds_every_page_size(client):
    """API.md: `?limit=` (default 100, max 1000); the document said any integer."""
    paths = (await client.get("/schema/openapi.json")).json()["paths"]
    limits = [
        (path, p["schema"])
        for path, item in paths.items()
        for op in item.values()
        if isinstance(op, dict)
        for p in op.get("parameters", [])
        if p["name"] == "limit"
    ]
    assert len(limits) >= 10
    for path, schema in limits:
        assert (schema["minimum"], schema["maximum"], schema["default"]) == (1, 1000, 100), path


async def test_every_answer_in_the_document_says_what_it_holds(client):
    """A generated client's docs show each response's description; Litestar's defaults were
    HTTP's reason phrases ("Document created, URL follows", "Request fulfilled, document
    follows"), which tell a reader nothing about the answer."""
    paths = (await client.get("/schema/openapi.json")).json()["paths"]
    reason_phrases = {s.description for s in HTTPStatus}
    answers = [
        (method.upper(), path, code, response.get("description", ""))
        for path, item in paths.items()
        for method, op in item.items()
        if isinstance(op, dict) and method != "head"
        for code, response in op["responses"].items()
        if code.startswith("2")
    ]
    assert len(answers) >= 45
    assert [a for a in answers if not a[3] or a[3] in reason_phrases] == []


def valid_under(document: dict, schema: dict, value: object) -> bool:
    """Whether `value` is valid under `schema`, a part of the served `document` (its $refs
    resolved there), as a generated client's JSON Schema validator reads it."""
    return jsonschema_rs.Draft202012Validator(
        {**schema, "components": document["components"]}
    ).is_valid(value)


async def test_what_the_api_takes_and_sends_is_valid_under_its_document(client, keys):
    """Litestar documents a union as `oneOf`, which needs exactly one branch to match: an
    integer trait (`{"visits": 3}` is an integer and a number) and the health answer (`Any` or
    a dict) were invalid under the document, so a validating client refused them."""
    document = (await client.get("/schema/openapi.json")).json()
    body = {"source": "crm", "email": "doc.union@example.com", "traits": {"visits": 3}}
    r = await client.post("/v1/profiles", json=body, headers=keys["ingest"])
    assert r.status_code == 201, r.text
    assert valid_under(document, {"$ref": "#/components/schemas/ProfileIn"}, body)
    health = document["paths"]["/health"]["get"]["responses"]["200"]["content"]
    answer = (await client.get("/health")).json()
    assert valid_under(document, health["application/json"]["schema"], answer)


async def test_the_document_says_a_body_takes_no_field_it_does_not_name(client, keys):
    """A body with a field it does not know is a 400 naming it (a typo must not be dropped in
    silence); the document allowed any extra field, so a client checking against it sent one."""
    document = (await client.get("/schema/openapi.json")).json()
    grant = {**WITHDRAWAL, "status": "granted", "evidence": {"wording_id": "w-1", "colour": 1}}
    segment = {"name": "s", "purpose": "marketing", "channel": "email", "rules": {"all": []}}
    for path, component, body, field in [
        ("/v1/consents", "ConsentIn", {**WITHDRAWAL, "colour": 1}, "colour"),
        ("/v1/consents", "ConsentIn", grant, "evidence.colour"),
        ("/v1/segments", "SegmentIn", {**segment, "colour": 1}, "colour"),
    ]:
        r = await client.post(path, json=body, headers=keys["admin"])
        assert r.status_code == 400, (path, r.text)
        assert [e["field"] for e in r.json()["errors"]] == [field], path
        assert not valid_under(document, {"$ref": f"#/components/schemas/{component}"}, body)
    bodies = [
        ref.rsplit("/", 1)[1]
        for item in document["paths"].values()
        for op in item.values()
        if isinstance(op, dict)
        and "application/json" in op.get("requestBody", {}).get("content", {})
        # a body that may be left out (rotate-secret's) is anyOf [the body, null]
        for schema in [op["requestBody"]["content"]["application/json"]["schema"]]
        for ref in [schema.get("$ref"), *(s.get("$ref") for s in schema.get("anyOf", []))]
        if ref
    ]
    assert len(bodies) >= 14
    schemas = document["components"]["schemas"]
    for name in [*bodies, "ConsentItemIn", "EvidenceIn", "IdentifierIn"]:
        if name != "InboundSmsIn":  # an SMS gateway's payload carries fields of its own
            assert schemas[name].get("additionalProperties") is False, name
    sms = {"from": "+79161234567", "text": "hello", "gateway_id": "g-1"}
    assert (await client.post("/v1/inbound/sms", json=sms, headers=keys["ingest"])).is_success
    assert valid_under(document, {"$ref": "#/components/schemas/InboundSmsIn"}, sms)


async def test_the_openapi_document_says_a_batch_holds_profile_records(client):
    """A batch's records are each a POST /v1/profiles body, reported one by one (so the body
    takes any value as a record and answers for it in its result)."""
    schemas = (await client.get("/schema/openapi.json")).json()["components"]["schemas"]
    records = schemas["BatchIn"]["properties"]["records"]
    assert records["items"] == {"$ref": "#/components/schemas/ProfileIn"}
    assert records["maxItems"] == 1000
    assert "source" in schemas["ProfileIn"]["properties"]


async def test_the_openapi_document_lists_the_404_of_a_customer_named_in_the_body_or_query(
    client, keys
):
    """An operation that names a customer by identifier in its body or query answers 404 for
    an unknown one (API.md: `GET /v1/profiles?email=...`: the body, or 404); the document
    listed a 404 only where the path names something, so a generated client had no 404 for
    these, and the `default` it fell to says 409, 410, 429, 500, 503."""
    from datetime import UTC, datetime, timedelta

    paths = (await client.get("/schema/openapi.json")).json()["paths"]
    nobody = "01a248b2-029a-772e-ac11-4e2a6039a300"
    email = "nobody@example.com"
    when = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    asks = [
        ("get", "/v1/profiles", "admin", {"params": {"email": email}}),
        ("get", "/v1/audit/evidence-bundle", "compliance", {"params": {"email": email}}),
        (
            "post",
            "/v1/events",
            "ingest",
            {
                "json": {
                    "source": "shop",
                    "event_id": "e1",
                    "type": "page_view",
                    "occurred_at": when,
                    "profile_id": nobody,
                }
            },
        ),
        (
            "post",
            "/v1/consents",
            "ingest",
            {"json": {**WITHDRAWAL, "email": None, "profile_id": nobody}},
        ),
        ("post", "/v1/opt-outs", "ingest", {"json": {"profile_id": nobody, "source": "x"}}),
        ("post", "/v1/preference-links", "ingest", {"json": {"profile_id": nobody}}),
        ("post", "/v1/access-requests", "compliance", {"json": {"email": email}}),
        (
            "post",
            "/v1/erasure-requests",
            "compliance",
            {"json": {"email": email, "requested_by": "customer"}},
        ),
    ]
    for method, path, role, sent in asks:
        r = await client.request(method.upper(), path, headers=keys[role], **sent)
        assert r.status_code == 404, (path, r.text)
        documented = paths[path][method]["responses"]
        assert "404" in documented, path
        assert documented["404"]["content"][PROBLEM]["schema"] == {
            "$ref": "#/components/schemas/Problem"
        }


def examples_in(node: object, path: str = "") -> list[tuple[str, object]]:
    """(where, value) of every example in a part of the OpenAPI document."""
    found: list[tuple[str, object]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("example", "examples"):
                found.append((f"{path}/{key}", value))
            found += examples_in(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += examples_in(value, f"{path}[{i}]")
    return found


async def test_the_documents_examples_are_what_the_api_sends(client, keys):
    """Litestar made up examples for the 200 answers of POST /v1/profiles and POST /v1/events
    (`{"DwEkQQHiBrmXZcSFtoJx": "34"}`); a client or a reader of the browsable document took
    them for the answer. Every example in the document is now one written for it."""
    document = (await client.get("/schema/openapi.json")).json()
    where = sorted(w for w, _ in examples_in(document))
    assert where == [
        "/components/schemas/QueryIn/properties/rules/examples",
        "/components/schemas/SegmentIn/properties/rules/examples",
        "/paths//v1/events/post/responses/200/content/application/json/examples",
        "/paths//v1/profiles/post/responses/200/content/application/json/examples",
    ]

    def example_of(path: str) -> dict:
        ok = document["paths"][path]["post"]["responses"]["200"]["content"]["application/json"]
        (example,) = ok["examples"].values()
        return example["value"]

    record = {"source": "crm", "email": "example@example.com"}
    assert (
        await client.post("/v1/profiles", json=record, headers=keys["ingest"])
    ).status_code == 201
    r = await client.post("/v1/profiles", json=record, headers=keys["ingest"])
    assert r.status_code == 200, r.text
    assert example_of("/v1/profiles").keys() == r.json().keys()
    order = {
        "source": "shop",
        "event_id": "ord-77",
        "type": "purchase",
        "occurred_at": "2026-11-01T12:00:00Z",
        "email": "example@example.com",
        "amount": "4500.00",
        "currency": "RUB",
    }
    assert (await client.post("/v1/events", json=order, headers=keys["ingest"])).status_code == 201
    r = await client.post("/v1/events", json=order, headers=keys["ingest"])
    assert r.status_code == 200, r.text
    assert example_of("/v1/events") == {
        **r.json(),
        "profile_id": example_of("/v1/events")["profile_id"],
    }


async def test_a_request_naming_no_customer_is_told_what_this_endpoint_takes(client, keys):
    """GET /v1/profiles takes email, phone or source + external_id (a profile id goes in the
    path), and `?profile_id=` answered 400 asking for "one of profile_id, email, ..."; the
    audit queries, which take no external id, asked for one."""
    some_id = "0193a5f2-7c1e-7b3a-9d2e-5f0a1b2c3d4e"
    r = await client.get("/v1/profiles", params={"profile_id": some_id}, headers=keys["admin"])
    assert r.status_code == 400, r.text
    assert r.json()["errors"] == [
        {"field": "email", "message": "one of email, phone, source + external_id is required"}
    ]
    h = keys["compliance"]
    for path, params in [
        ("/v1/audit/evidence-bundle", {}),
        ("/v1/audit/evidence-bundle", {"email": " "}),
        ("/v1/audit/consent-events", {"phone": " "}),
    ]:
        r = await client.get(path, params=params, headers=h)
        assert r.status_code == 400, (path, r.text)
        assert r.json()["errors"] == [
            {"field": "email", "message": "one of profile_id, email, phone is required"}
        ], path
    r = await client.get("/v1/audit/access-log", params={"profile_id": " "}, headers=h)
    assert r.json()["errors"] == [{"field": "profile_id", "message": "profile_id is required"}]
    r = await client.post(
        "/v1/inbound/sms", json={"from": " ", "text": "STOP"}, headers=keys["ingest"]
    )
    assert r.json()["errors"] == [{"field": "from", "message": "phone is required"}]
    # where every identifier is taken, every one is named, as before
    r = await client.post("/v1/access-requests", json={"email": " "}, headers=keys["compliance"])
    assert r.json()["errors"] == [
        {
            "field": "email",
            "message": "one of profile_id, email, phone, source + external_id is required",
        }
    ]
