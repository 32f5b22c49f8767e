"""GET /metrics: Prometheus text for operators, behind its own bearer token.

`CDP_METRICS_TOKEN` names the token a scraper sends (`Authorization: Bearer ...`); without it
the endpoint answers 404, as if it did not exist. It is not an API key: a scraper holding an
admin or compliance key could read every customer. The text holds:
- the HTTP figures of Litestar's Prometheus middleware (`cdp_requests_total`,
  `cdp_request_duration_seconds`, ...), labelled by route template, never by path: a path
  can hold a manage link's or an unsubscribe link's token;
- the operator's figures of `cdp.ops_figures`, read at each scrape.
"""

from __future__ import annotations

import hmac
import os

from litestar import Response, get
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, NotFoundException
from litestar.plugins.prometheus import PrometheusConfig
from prometheus_client import REGISTRY, CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

from api.auth import CHALLENGE
from api.deps import PlatformDep
from cdp.ops_figures import figures

METRICS: dict[str, object] = {"metrics": True}
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's multiprocess mode

# HTTP figures by route template (group_path): "/preferences/{token:str}", never the token
PROMETHEUS = PrometheusConfig(app_name="cdp", prefix="cdp", group_path=True, exclude=["^/metrics$"])


def check_metrics_token(connection: ASGIConnection) -> None:
    """The guard of GET /metrics (`api.auth`): 404 while no token is set, 401 without it."""
    expected = connection.app.state.platform.settings.metrics_token
    if expected is None:
        raise NotFoundException("metrics are off: set CDP_METRICS_TOKEN to turn them on")
    scheme, _, token = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), expected.encode()
    ):
        raise NotAuthorizedException("missing or wrong metrics token", headers=CHALLENGE)


@get("/metrics", opt=METRICS, include_in_schema=False)
async def metrics(platform: PlatformDep) -> Response[bytes]:
    registry = CollectorRegistry()
    gauges: dict[str, Gauge] = {}
    for f in await figures(platform):
        gauge = gauges.get(f.name)
        if gauge is None:
            gauge = gauges[f.name] = Gauge(
                f.name, f.help, [k for k, _ in f.labels], registry=registry
            )
        (gauge.labels(*(v for _, v in f.labels)) if f.labels else gauge).set(f.value)
    body = generate_latest(http_figures()) + generate_latest(registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def http_figures() -> CollectorRegistry:
    """This process's HTTP figures, or under `cdp serve --workers N` (`api.workers`) those of
    every worker added up: the workers write them to files in PROMETHEUS_MULTIPROC_DIR."""
    if not os.environ.get(METRICS_DIR_ENV):
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    return registry
