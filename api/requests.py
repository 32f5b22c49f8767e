"""The app's request class: a JSON body nested too deeply to decode is invalid input.

Litestar decodes a JSON body with msgspec into Python objects before converting it to the
handler's type, and msgspec stops at Python's recursion limit (about 1,000 levels) with a
RecursionError, which was a 500. Nothing this API takes nests more than a few levels (segment
rules stop at 16), so it is a 400 naming the body. So is a body with an object that names a
key twice (`cdp.json_keys`).
"""

from __future__ import annotations

from typing import Any

from litestar import Request

from cdp.errors import TOO_DEEP, InvalidInput
from cdp.json_keys import duplicate_key


class ApiRequest(Request):
    async def json(self) -> Any:
        try:
            value = await super().json()
        except RecursionError:
            raise InvalidInput.field("body", TOO_DEEP) from None
        problem = duplicate_key(await self.body(), value)  # one of two values was lost
        if problem:
            raise InvalidInput.field("body", problem)
        return value
