"""A query parameter given more than once is a 400 naming it.

No parameter of this API takes a list, and the framework kept the last value without a word:
`GET /v1/profiles?email=a@x&email=b@x` answered with b's profile, and `purpose=marketing&
purpose=service` filtered on service only. Parameters the handler does not take are ignored,
as they are when given once.
"""

from __future__ import annotations

from litestar import Request
from litestar.enums import ParamType
from litestar.params import ParameterKwarg

from cdp.errors import FieldError, InvalidInput

MESSAGE = "given more than once; this parameter takes one value"


def _query_names(request: Request) -> set[str]:
    names = set()
    for name, field in request.route_handler.parsed_fn_signature.parameters.items():
        kwarg = field.kwarg_definition
        if not isinstance(kwarg, ParameterKwarg):
            names.add(name)  # a plain parameter is a query parameter unless it is a dependency
        elif kwarg.param_type == ParamType.QUERY:
            names.add(kwarg.name or name)
    return names


def refuse_repeated_query(request: Request) -> None:
    seen: set[str] = set()
    repeated = []
    for name, _ in request.query_params.multi_items():
        if name in seen and name not in repeated:
            repeated.append(name)
        seen.add(name)
    if not repeated:
        return
    errors = [FieldError(name, MESSAGE) for name in repeated if name in _query_names(request)]
    if errors:
        raise InvalidInput("; ".join(f"{e.field}: {e.message}" for e in errors), errors)
