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
from collections.abc import Iterator

from litestar import Response, get
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, NotFoundException
from litestar.plugins.prometheus import PrometheusConfig
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from api.auth import CHALLENGE
from api.deps import PlatformDep
from api.in_flight import NOT_COUNTED
from api.workers import multiprocess_metrics_dir
from cdp.ops_figures import Figure, figures

METRICS: dict[str, object] = {"metrics": True, **NOT_COUNTED}

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
    registry.register(_Figures(await figures(platform)))
    body = generate_latest(http_figures()) + generate_latest(registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


class _Figures(Collector):
    """The operator's figures read for one scrape, as gauge families. Not `Gauge` objects:
    under `cdp serve --workers N` those would also be written to the workers' shared figures
    and each family shown twice, once per worker pid."""

    def __init__(self, read: list[Figure]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families: dict[str, GaugeMetricFamily] = {}
        for f in self._read:
            family = families.get(f.name)
            if family is None:
                family = families[f.name] = GaugeMetricFamily(
                    f.name, f.help, labels=[k for k, _ in f.labels]
                )
            family.add_metric([v for _, v in f.labels], f.value)
        yield from families.values()


def http_figures() -> CollectorRegistry:
    """This process's HTTP figures, or in a worker of `cdp serve --workers N` those of every
    worker added up (the workers write them to files in a directory of their supervisor's)."""
    if multiprocess_metrics_dir() is None:
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    return registry
