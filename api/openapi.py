"""The OpenAPI document tells the errors as the API answers them.

Litestar documents only a 400 per operation, as its own `application/json` validation error.
Every error here is an RFC 9457 problem (`api.errors`, API.md), so each operation gets, under
`application/problem+json` with one shared `Problem` schema: 400 where it takes parameters or a
body, 401 and 403 unless it is public, 404 where its path names something or it names a
customer by identifier in its body or query (`opt=NAMES_A_CUSTOMER`: an unknown one is a 404),
413 where it takes a body, and a `default` for the rest (409, 410, 429, 500, 503). Public
operations also say they need no key (`security: []`), overriding the document-wide bearer
requirement, so that a generated client does not send one. A union is `anyOf`
(`document_unions`), and a body that refuses fields it does not name says so
(`document_closed_bodies`).
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from typing import Any

import msgspec.inspect
from litestar import Litestar
from litestar.openapi.spec import (
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Reference,
    Schema,
)
from litestar.routes import HTTPRoute

from api.errors import PROBLEM

# A page or probe answered to HEAD as to GET: the server sends HEAD's answer without the body,
# with GET's headers (Content-Length included, RFC 9110 §9.3.2).
GET_AND_HEAD = ["GET", "HEAD"]


def operation_id(get_id: str) -> Any:
    """GET keeps the operationId it had before HEAD was added; HEAD's ends in Head."""
    return lambda _handler, method, _path: get_id if method == "GET" else f"{get_id}Head"


# A handler's opt: it names a customer by identifier in its body or query, and answers 404 for
# one it does not know (GET /v1/profiles?email=..., POST /v1/consents with a profile_id, ...)
NAMES_A_CUSTOMER: dict[str, object] = {"names_customer": True}

_PROBLEM_REF = Reference(ref="#/components/schemas/Problem")
PROBLEM_SCHEMA = Schema(
    type=OpenAPIType.OBJECT,
    required=["type", "title", "status", "detail"],
    properties={
        "type": Schema(type=OpenAPIType.STRING, format="uri"),
        "title": Schema(type=OpenAPIType.STRING),
        "status": Schema(type=OpenAPIType.INTEGER),
        "detail": Schema(type=OpenAPIType.STRING),
        "errors": Schema(
            type=OpenAPIType.ARRAY,
            description="Each bad field of an invalid input (400)",
            items=Schema(
                type=OpenAPIType.OBJECT,
                required=["field", "message"],
                properties={
                    "field": Schema(type=OpenAPIType.STRING),
                    "message": Schema(type=OpenAPIType.STRING),
                },
            ),
        ),
    },
    description="RFC 9457 problem details",
)
_WHY = {
    "400": "Invalid input: `errors` names each bad field; nothing is stored",
    "401": "Missing, unknown or revoked API key",
    "403": "This key's role may not use this endpoint",
    "404": "Unknown id or customer, or a link that is not (or no longer) valid",
    "413": "The request body is larger than the limit",
    "default": "Any other error (409 conflict, 410 erased, 429, 500, 503), as a problem",
}


def _problem(status: str) -> OpenAPIResponse:
    return OpenAPIResponse(
        description=_WHY[status],
        content={PROBLEM: OpenAPIMediaType(schema=_PROBLEM_REF)},
    )


def _errors_of(op: Operation, *, public: bool, names_something: bool) -> list[str]:
    wanted = []
    if op.parameters or op.request_body is not None or "400" in (op.responses or {}):
        wanted.append("400")
    if not public:
        wanted += ["401", "403"]
    if names_something:
        wanted.append("404")
    if op.request_body is not None:
        wanted.append("413")
    return [*wanted, "default"]


def _document_pages(responses: dict) -> None:
    """An operation a person reaches from a link (`opt={"pages": True}`) answers a browser that
    asks for HTML over JSON with a page. Its errors stay problems in the document: only such
    a browser gets them as pages (said in the operation's description)."""
    ok = responses.get("200")
    if isinstance(ok, OpenAPIResponse):
        page = OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING))
        ok.content = {**(ok.content or {}), "text/html": page}


def document_problems(app: Litestar) -> None:
    """Rewrite the app's (cached) OpenAPI document's error responses, once, at creation."""
    openapi = app.openapi_schema
    if openapi.components.schemas is None:
        openapi.components.schemas = {}
    openapi.components.schemas["Problem"] = PROBLEM_SCHEMA
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or route.path_format not in (openapi.paths or {}):
            continue
        item = openapi.paths[route.path_format]  # type: ignore[index]
        for handler in route.route_handlers:
            for method in handler.http_methods:
                op = getattr(item, method.lower(), None)
                if not isinstance(op, Operation):
                    continue
                public = bool(handler.opt.get("public"))
                if public:
                    op.security = []
                responses = dict(op.responses or {})
                names = "{" in route.path or bool(handler.opt.get("names_customer"))
                for status in _errors_of(op, public=public, names_something=names):
                    responses[status] = _problem(status)
                if handler.opt.get("pages"):
                    _document_pages(responses)
                op.responses = responses


def document_batch_records(app: Litestar) -> None:
    """A batch's `records` are decoded one by one (each stands alone: one that is not even an
    object is reported in its result), so the body's schema takes any value; the document says
    what each should be: a POST /v1/profiles body."""
    schemas = app.openapi_schema.components.schemas or {}
    batch, record = schemas.get("BatchIn"), schemas.get("ProfileIn")
    if isinstance(batch, Schema) and batch.properties and record is not None:
        records = batch.properties["records"]
        if isinstance(records, Schema):
            records.items = Reference(ref="#/components/schemas/ProfileIn")
            records.description = "Each a record as POST /v1/profiles takes it"


def document_unions(app: Litestar) -> None:
    """Litestar writes a union as `oneOf`, which JSON Schema reads as exactly one branch: an
    integer trait (integer and number) and the health answer (`Any` or a dict) matched two,
    and a validating client refused them. A union is any of its branches: `anyOf`."""
    _any_of(app.openapi_schema, set())


def _any_of(node: object, seen: set[int]) -> None:
    if isinstance(node, (list, tuple)):
        for item in node:
            _any_of(item, seen)
    elif isinstance(node, dict):
        for item in node.values():
            _any_of(item, seen)
    elif is_dataclass(node) and not isinstance(node, type) and id(node) not in seen:
        seen.add(id(node))  # a schema object shared by several places is rewritten once
        if isinstance(node, Schema) and node.one_of and not node.any_of:
            node.any_of, node.one_of = node.one_of, None
        for field in fields(node):
            _any_of(getattr(node, field.name), seen)


def document_closed_bodies(app: Litestar) -> None:
    """A request body (and each object in it) that refuses a field it does not name, with a
    400 naming it (`forbid_unknown_fields`), says so: `additionalProperties: false`. The
    document allowed any, so a client that checks against it sent them."""
    schemas = app.openapi_schema.components.schemas or {}
    bodies = [
        data.annotation
        for route in app.routes
        if isinstance(route, HTTPRoute)
        for handler in route.route_handlers
        if (data := handler.parsed_fn_signature.parameters.get("data")) is not None
    ]
    for struct in _closed_structs(msgspec.inspect.multi_type_info(bodies), set()):
        schema = schemas.get(struct.__name__)
        if isinstance(schema, Schema):
            schema.additional_properties = False


def _closed_structs(node: object, seen: set[int]) -> list[type]:
    """The Structs refusing unknown fields in a `msgspec.inspect` type tree (its types and
    their fields)."""
    if isinstance(node, (list, tuple)):
        return [s for item in node for s in _closed_structs(item, seen)]
    if not isinstance(node, msgspec.Struct) or id(node) in seen:  # a Type, or a Field
        return []
    seen.add(id(node))
    found = []
    if isinstance(node, msgspec.inspect.StructType) and node.forbid_unknown_fields:
        found.append(node.cls)
    for field in msgspec.structs.fields(node):
        found += _closed_structs(getattr(node, field.name), seen)
    return found
