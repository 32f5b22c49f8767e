"""The benchmarks under bench/ still run (at a tiny scale, on SQLite): a benchmark that rots
between two full runs gives no figure when one is needed (bench.ingest's plain baseline stopped
with a TypeError for a day before anyone ran it). Figures themselves are not checked here:
performance is measured by the benchmarks, never by timed tests."""

from __future__ import annotations

import re

import pytest

from bench import events as bench_events
from bench import ingest as bench_ingest
from bench import segments as bench_segments

NUMBER = re.compile(r"\d[\d,]*(\.\d+)?")


def table_row(line: str, db: str) -> list[str]:
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    assert cells[0] == db, line
    return cells


@pytest.mark.slow
async def test_the_ingest_and_events_benchmarks_run(backend):
    if backend != "sqlite":
        return  # the same code on both; one database keeps the suite quick
    (line,) = await bench_ingest.run(300, ["sqlite"], workers=0)
    cells = table_row(line, "sqlite")
    assert all(NUMBER.search(c) for c in cells[1:6]), line  # the plain baseline ran too
    (line,) = await bench_events.run(300, 30, ["sqlite"])
    assert all(NUMBER.search(c) for c in table_row(line, "sqlite")[1:8]), line


@pytest.mark.slow
async def test_the_segments_benchmark_runs(backend, capsys):
    if backend != "sqlite":
        return
    await bench_segments.main(300, "sqlite", 1, memory=False)
    out = capsys.readouterr().out
    assert "export" in out and "rows/s" in out and "first page" in out


@pytest.mark.slow
async def test_the_requests_benchmark_runs(backend):
    if backend != "sqlite":
        return
    from bench import requests as bench_requests

    lines = await bench_requests.run("sqlite", customers=40, requests=3)
    assert len(lines) == 8  # GET /health/live and seven requests of the API
    for line in lines:
        cells = table_row(line, "sqlite")
        assert all(NUMBER.search(c) for c in cells[2:]), line


@pytest.mark.slow
async def test_the_scale_benchmark_runs(backend, tmp_path):
    if backend != "sqlite":
        return
    from bench import scale as bench_scale

    lines = await bench_scale.run("sqlite", 300, 600, 1, tmp_path, keep=False)
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| request")]
    assert len(rows) == len(bench_scale.REQUESTS)
    for line in rows:  # every request answered as expected, on both bases
        assert "HTTP" not in line, line


@pytest.mark.slow
async def test_the_opt_out_latency_benchmark_runs(backend):
    if backend != "sqlite":
        return
    import argparse

    from bench import optout_latency

    args = argparse.Namespace(
        load=["batches", "import"], clients=2, batch=20, seconds=2.0, import_rows=300
    )
    lines = await optout_latency.run("sqlite", args)
    assert len(lines) == 2  # under batches, and beside `cdp import`
    for line in lines:
        cells = table_row(line, "sqlite")
        assert all(NUMBER.search(c) for c in cells[2:]), line
