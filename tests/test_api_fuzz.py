"""Every operation of the served OpenAPI document, fuzzed from the document itself
(schemathesis): no answer is a 5xx, and each answer's status, media type and body are the
ones the document gives. Inputs that fit the document and inputs that break it alike, with
the seeded customers', segment's and erasure request's ids in paths, under an admin key.

Bounded and derandomized (the same cases on every run): it guards what an exploration with
thousands of cases per operation found, not a search of its own.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.helpers import hypothesis_on_loop

pytestmark = pytest.mark.slow

EXAMPLES = 12  # per operation: about 600 requests in all
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
GRANT = {
    "purpose": "marketing",
    "channel": "email",
    "status": "granted",
    "source": "web_form",
    "occurred_at": "2026-11-20T09:00:00Z",
    "evidence": {"wording_id": "newsletter-v3", "method": "double_opt_in"},
}


async def seed(client: httpx.AsyncClient, admin: dict[str, str]) -> dict[str, list[str]]:
    """Customers with consents and an order, a segment, an erasure request: their ids."""
    ids: dict[str, list[str]] = {"profile_id": [], "segment_id": [], "request_id": []}
    for i in range(3):
        record = {
            "source": "crm",
            "external_id": f"C-{i}",
            "email": f"fuzz{i}@example.com",
            "phone": f"+7916123450{i}",
            "first_name": "Anna",
            "country": "RU",
            "traits": {"visits": i, "tier": "gold"},
            "consents": [GRANT],
        }
        r = await client.post("/v1/profiles", json=record, headers=admin)
        assert r.status_code == 201, r.text
        ids["profile_id"].append(r.json()["profile_id"])
    order = {"source": "shop", "event_id": "o-1", "type": "purchase", "amount": "10.00"}
    order |= {"occurred_at": "2026-11-01T12:00:00Z", "email": "fuzz0@example.com"}
    order |= {"currency": "RUB"}
    assert (await client.post("/v1/events", json=order, headers=admin)).status_code == 201
    rules = {"field": "country", "op": "eq", "value": "RU"}
    segment = {"name": "ru", "purpose": "marketing", "channel": "email", "rules": rules}
    r = await client.post("/v1/segments", json=segment, headers=admin)
    ids["segment_id"].append(r.json()["id"])
    erasure = {"email": "fuzz2@example.com", "requested_by": "operator"}
    r = await client.post("/v1/erasure-requests", json=erasure, headers=admin)
    ids["request_id"].append(r.json()["request_id"])
    return ids


def operations(document: dict[str, Any]) -> list[Any]:
    schema = schemathesis.openapi.from_dict(document)
    return [result.ok() for result in schema.get_all_operations()]


def cases(operation: Any, ids: dict[str, list[str]]) -> st.SearchStrategy:
    """Cases of `operation` that fit its document and cases that break it, with a seeded id
    in its path half of the time."""
    modes = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
    drawn = st.one_of([operation.as_strategy(generation_mode=mode) for mode in modes])
    return st.tuples(drawn, st.randoms(use_true_random=False)).map(
        lambda pair: with_known_ids(*pair, ids)
    )


def with_known_ids(case: Any, rnd: Any, ids: dict[str, list[str]]) -> Any:
    for name in list(case.path_parameters or {}):
        if ids.get(name) and rnd.random() < 0.5:
            case.path_parameters[name] = rnd.choice(ids[name])
    return case


def prepared(case: Any, admin: dict[str, str]) -> requests.PreparedRequest:
    """The request exactly as schemathesis would send it (its serialisation of forms and
    bodies), to be sent on through the app's own client."""
    kwargs = case.as_transport_kwargs(base_url="http://testserver")
    kwargs["headers"] = {**kwargs.get("headers", {}), **admin}
    kwargs.pop("cookies", None)
    return requests.Request(**kwargs).prepare()


async def send(client: httpx.AsyncClient, request: requests.PreparedRequest) -> httpx.Response:
    body = request.body.encode() if isinstance(request.body, str) else request.body
    return await client.request(
        request.method or "GET", request.url or "/", headers=dict(request.headers), content=body
    )


async def test_no_operation_answers_a_5xx_or_off_its_document(client, keys):
    admin = keys["admin"]
    ids = await seed(client, admin)
    document = (await client.get("/schema/openapi.json")).json()
    failures: list[str] = []

    def test(run) -> None:  # type: ignore[no-untyped-def]
        for operation in operations(document):

            @settings(
                max_examples=EXAMPLES,
                derandomize=True,
                database=None,
                deadline=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(cases(operation, ids))
            def example(case: Any) -> None:
                response = run(send(client, prepared(case, admin)))
                case.validate_response(response, checks=CHECKS)

            try:
                example()
            except Exception as exc:  # every operation is tried; all failures are reported
                failures.append(f"{operation.method.upper()} {operation.path}: {exc}")

    await hypothesis_on_loop(test)
    assert not failures, "\n\n".join(failures)
