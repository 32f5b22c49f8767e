"""Every request's query, JSON body and form is refused with a 400 naming the field when any
text in it holds a NUL character (`cdp.nul_text` says why). Runs as the app's before_request
hook: after routing and the auth guard, before the handler decodes its parameters. A handler
whose body holds records that report their own errors (`opt={"records_report_errors": True}`:
the profile batch) is left to `parse_profile`, so one bad record does not refuse the others.
"""

from __future__ import annotations

from litestar import Request
from litestar.exceptions import SerializationException

from cdp.errors import InvalidInput
from cdp.nul_text import MESSAGE, NUL, refuse_nul

_FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")


async def refuse_nul_text(request: Request) -> None:
    for name, value in request.query_params.multi_items():
        if NUL in name:
            raise InvalidInput.field("query", MESSAGE)
        refuse_nul({name: value}, whole="query")
    if request.method not in ("POST", "PUT", "PATCH"):
        return
    if request.route_handler.opt.get("records_report_errors"):
        return
    # read (and keep) the raw body first: parsing a multipart form would otherwise consume the
    # stream, and a JSON handler sent a form then failed with a 500 instead of its 400
    body = await request.body()
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media in _FORMS:
        form = await request.form()
        for name, value in form.multi_items():
            if NUL in name:
                raise InvalidInput.field("body", MESSAGE)
            if isinstance(value, str):
                refuse_nul({name: value})
        return
    if b"\\u0000" not in body:  # JSON can only carry a NUL escaped
        return
    try:
        data = await request.json()  # decoded once: the handler reads the same value
    except SerializationException:
        return  # the handler's own decoding answers 400 for a body that is not JSON
    refuse_nul(data)
