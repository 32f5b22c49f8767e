"""Where a webhook may be delivered: never to this network's own machines in production.

A webhook URL is chosen by whoever holds an admin key. Without a limit, the dispatcher would
POST to any address it can reach: the cloud's metadata service (169.254.169.254), a database's
HTTP port on localhost, a service inside the private network (server-side request forgery).

- At delivery (the one place that counts), `protect` makes the dispatcher's HTTP client resolve
  the receiver's name itself before it connects, and refuse (`SSRFProtectionError`) when any
  address it resolves to is not globally reachable: no connection is opened, so a refusal says
  nothing about which internal ports are open. httpx-secure (a maintained library) then checks
  the address it actually connects to and pins it, so a name that resolves to a public address
  when checked and to a private one a moment later (DNS rebinding) gains nothing. A refused
  delivery is retried, then dead, like any failed one.
- At registration, `refuse_private_literal` turns away a URL whose host is such an address in
  any spelling IPv4 allows (`127.1`, `2130706433`, `0x7f000001`), localhost, a name of one
  label (`intranet`) or of a suffix reserved for private networks (`.internal`, `.local`,
  `.lan`, `.home.arpa`), with a 400 naming `url`, so the mistake shows at once.

Both apply in production (`CDP_ENV=production`), unless CDP_WEBHOOK_ALLOW_PRIVATE=1 allows
receivers inside the same network; development and the tests deliver to 127.0.0.1.
"""

from __future__ import annotations

import ipaddress
import socket

import anyio
import httpx
from httpx_secure import SSRFProtectionError, httpx_ssrf_protection

from cdp.errors import InvalidInput

_LOCAL_NAMES = ("localhost", "localhost.localdomain")
_PRIVATE_SUFFIXES = (".localhost", ".internal", ".local", ".localdomain", ".lan", ".home.arpa")
_REFUSED = "must not point at this network's own machines"


def private_allowed(allow_private: bool | None, *, production: bool) -> bool:
    return (not production) if allow_private is None else allow_private


def protect(http: httpx.AsyncClient) -> httpx.AsyncClient:
    """The client, refusing connections to addresses that are not globally reachable."""
    http.event_hooks["request"] = [*http.event_hooks["request"], _resolve_first]
    return httpx_ssrf_protection(http)


async def _resolve_first(request: httpx.Request) -> None:
    """Refuse, before any connection, a receiver whose name resolves to an address that is
    not globally reachable."""
    host = request.url.host
    port = request.url.port or (443 if request.url.scheme == "https" else 80)
    literal = ip_literal(host)
    if literal is not None:
        addresses = [literal]
    else:
        try:
            found = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise httpx.ConnectError("the receiver's name does not resolve") from exc
        addresses = [ipaddress.ip_address(info[4][0]) for info in found]
    for address in addresses:
        if not address.is_global:
            raise SSRFProtectionError.non_global(
                str(address), hostname=host, ip_addr=address, port=port
            )


def ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a host names by itself, in any spelling the resolver takes: the dotted
    quad, and IPv4's short, decimal, octal and hex forms (`127.1`, `2130706433`, `0x7f.1`)."""
    name = host.strip("[]")
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        pass
    if not name or not all(c in "0123456789abcdefxABCDEFX." for c in name):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(name))
    except OSError:
        return None


def refuse_private_literal(host: str) -> None:
    name = host.strip("[]").rstrip(".").lower()
    address = ip_literal(name)
    if address is not None:
        if not address.is_global:
            raise InvalidInput.field("url", _REFUSED)
        return
    if name in _LOCAL_NAMES or name.endswith(_PRIVATE_SUFFIXES) or "." not in name:
        raise InvalidInput.field("url", _REFUSED)
