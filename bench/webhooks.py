"""Opt-out to webhook delivery lag under a steady 100 opt-outs/s, against a real `cdp serve`.

    python -m bench.webhooks --db sqlite --db postgres --rate 100 --seconds 20

Two set-ups: `in-app`, the dispatcher inside `cdp serve` (one process does both), and `worker`,
`cdp serve` with CDP_WEBHOOK_DISPATCHER=off next to one `cdp dispatch` process. Default
dispatcher settings (an idle one looks for work every 200 ms). The benchmark process runs a
signature-checking receiver on loopback, subscribes it to `opt_out`, and sends opt-outs of new
addresses at a fixed rate (open loop: one every 1/rate s, whatever the answers do). For each
it notes when the answer arrived and when the receiver got the signed delivery for that
address's blind index. Lag = delivery - answer.

Baseline, measured in the same run: the round trip of the same kind of signed POST sent
straight from this process to the receiver (what delivery costs without the outbox). Target:
lag p99 under 1 s. The "rate/s" column is the rate actually achieved: where it falls short of
the one asked for, the API itself could not keep up on this machine, and the lag measures its
queue rather than the dispatcher.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from bench.common import cli_env, scratch_platform, until_serving
from cdp.apikeys import Principal, create_key
from consent.outbox import signing, subscriptions
from consent.outbox.receiver import Receiver
from consent.outbox.schemas import SubscriptionIn

TARGET_P99_MS = 1000.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else float("nan")


async def baseline(receiver: Receiver, n: int = 300) -> list[float]:
    key = signing.secret_key(receiver.secret)
    times = []
    async with httpx.AsyncClient() as http:
        for i in range(n):
            body = b'{"event_id":"%d","kind":"opt_out"}' % i
            headers = signing.headers(key, f"baseline-{i}", body)
            t = time.perf_counter()
            r = await http.post(receiver.url, content=body, headers=headers)
            times.append(time.perf_counter() - t)
            assert r.status_code == 200
    return times


async def run_one(db: str, mode: str, rate: float, seconds: float) -> dict[str, float | int | str]:
    tmp = Path(tempfile.mkdtemp(prefix="cdp-bench-webhooks-"))
    receiver = Receiver("")
    await receiver.start()
    async with scratch_platform(db, tmp) as p:
        sub = await subscriptions.create(
            p, Principal("bench", "admin"), SubscriptionIn(url=receiver.url, kinds=["opt_out"])
        )
        receiver.secret = sub.secret or ""
        ingest = await create_key(p.db, "bench-ingest", "ingest")
        env = cli_env(p, tmp)
        env.pop("CDP_NATS_URL", None)
        if mode == "worker":
            env["CDP_WEBHOOK_DISPATCHER"] = "off"
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "cdp.cli", "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=(tmp / "serve.log").open("w"),
        )
        workers = []
        if mode == "worker":
            workers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "cdp.cli", "dispatch"],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=(tmp / "dispatch.log").open("w"),
                )
            )
        try:
            base_times = await baseline(receiver)
            receiver.requests.clear()
            # few connections: httpx's pool costs CPU per request in proportion to its size, and
            # at 100 opt-outs/s of ~10 ms each, 16 connections are plenty for an open loop
            limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=60
            ) as client:
                await until_serving(client)
                headers = {"Authorization": f"Bearer {ingest}"}
                run = uuid.uuid4().hex[:6]
                answered: dict[str, float] = {}
                answer_latency: list[float] = []
                errors = 0

                async def one(i: int) -> None:
                    nonlocal errors
                    email = f"lag-{run}-{i}@example.com"
                    t = time.perf_counter()
                    try:
                        r = await client.post(
                            "/v1/opt-outs",
                            json={"source": "bench", "email": email},
                            headers=headers,
                        )
                    except httpx.TransportError:
                        errors += 1
                        return
                    answered[p.keys.indexer.email(email).hex()] = time.time()
                    answer_latency.append(time.perf_counter() - t)
                    if r.status_code != 200:
                        errors += 1

                total = int(rate * seconds)
                start = time.perf_counter()
                tasks = []
                for i in range(total):
                    delay = start + i / rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    tasks.append(asyncio.create_task(one(i)))
                await asyncio.gather(*tasks)
                sent_rate = total / (time.perf_counter() - start)
                await receiver.wait_for(total, seconds=60)
        finally:
            for proc in [server, *workers]:
                proc.terminate()
            for proc in [server, *workers]:
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
            await receiver.stop()
            print(f"server log: {tmp / 'serve.log'}", file=sys.stderr)
    arrived = {}
    for req in receiver.accepted:
        arrived.setdefault(req.payload["address_blind_index"], req.at)
    lags = [arrived[b] - t for b, t in answered.items() if b in arrived]
    invalid = sum(1 for r in receiver.requests if not r.valid)
    return {
        "db": db,
        "mode": mode,
        "opt_outs": total,
        "rate": sent_rate,
        "errors": errors,
        "delivered": len(lags),
        "duplicates": len(receiver.accepted) - len(arrived),
        "invalid": invalid,
        "answer_p50": pct(answer_latency, 0.5),
        "answer_p99": pct(answer_latency, 0.99),
        "lag_p50": pct(lags, 0.5),
        "lag_p99": pct(lags, 0.99),
        "lag_max": max(lags) * 1000 if lags else float("nan"),
        "base_p50": pct(base_times, 0.5),
        "base_p99": pct(base_times, 0.99),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", action="append", choices=["sqlite", "postgres"])
    ap.add_argument("--rate", type=float, default=100.0, help="opt-outs per second")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--mode", action="append", choices=["in-app", "worker"])
    args = ap.parse_args()
    rows = [
        asyncio.run(run_one(db, mode, args.rate, args.seconds))
        for db in args.db or ["sqlite"]
        for mode in args.mode or ["in-app", "worker"]
    ]
    print(
        "| db | dispatcher | opt-outs | rate/s | delivered | dup | bad sig | answer p50 / p99 ms "
        "| lag p50 ms | lag p99 ms | lag max ms | baseline POST p50 / p99 ms "
        "| lag p99 / baseline p99 | p99 < 1 s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ok = "yes" if r["lag_p99"] < TARGET_P99_MS and r["delivered"] == r["opt_outs"] else "NO"
        print(
            f"| {r['db']} | {r['mode']} | {r['opt_outs']} | {r['rate']:.0f} | {r['delivered']} | "
            f"{r['duplicates']} | {r['invalid']} | {r['answer_p50']:.1f} / {r['answer_p99']:.1f} | "
            f"{r['lag_p50']:.0f} | {r['lag_p99']:.0f} | {r['lag_max']:.0f} | "
            f"{r['base_p50']:.2f} / {r['base_p99']:.2f} | "
            f"{r['lag_p99'] / r['base_p99']:.0f}x | {ok} |"
        )


if __name__ == "__main__":
    main()
