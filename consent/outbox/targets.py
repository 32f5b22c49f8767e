"""Where a webhook may be delivered: never to this network's own machines in production.

A webhook URL is chosen by whoever holds an admin key. Without a limit, the dispatcher would
POST to any address it can reach: the cloud's metadata service (169.254.169.254), a database's
HTTP port on localhost, a service inside the private network (server-side request forgery).

- At delivery (the one place that counts), `protect` makes the dispatcher's HTTP client refuse
  to connect to an address that is not globally reachable, whatever name led to it. It checks
  the address it actually connects to and pins it, so a name that resolves to a public address
  when checked and to a private one a moment later (DNS rebinding) gains nothing. This is
  httpx-secure's job (a maintained library); a refused delivery records `SSRFProtectionError`
  and is retried, then dead, like any failed one.
- At registration, `refuse_private_literal` turns away a URL whose host is itself such an
  address, or localhost, with a 400 naming `url`, so the mistake shows at once.

Both apply in production (`CDP_ENV=production`), unless CDP_WEBHOOK_ALLOW_PRIVATE=1 allows
receivers inside the same network; development and the tests deliver to 127.0.0.1.
"""

from __future__ import annotations

import ipaddress

import httpx
from httpx_secure import httpx_ssrf_protection

from cdp.errors import InvalidInput

_LOCAL_NAMES = ("localhost", "localhost.localdomain")


def private_allowed(allow_private: bool | None, *, production: bool) -> bool:
    return (not production) if allow_private is None else allow_private


def protect(http: httpx.AsyncClient) -> httpx.AsyncClient:
    """The client, refusing connections to addresses that are not globally reachable."""
    return httpx_ssrf_protection(http)


def refuse_private_literal(host: str) -> None:
    name = host.strip("[]").rstrip(".").lower()
    if name in _LOCAL_NAMES or name.endswith(".localhost"):
        raise InvalidInput.field("url", "must not point at this network's own machines")
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return  # a name: checked where it is connected to
    if not address.is_global:
        raise InvalidInput.field("url", "must not point at this network's own machines")
