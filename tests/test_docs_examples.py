"""Docs as tests: the examples of README.md and docs/*.md (DOCS), read from
the markdown itself (never a copy), run as a new user would against a real `cdp serve` (tests/
crash.py's Site and `serving`), and held to what the text says of them: status codes, fields,
messages, counts. A change to the product or to the docs that breaks an example fails here.

Every example block of the documents is either run here (RUN) or named in NOT_RUN with the
reason; every `cdp ...` or `python -m bench...` command written in their prose is either run
(PROSE_RUN) or named in PROSE_NOT_RUN with the reason, and must name a command and options that
exist. A new example, or a renamed command or option, fails the inventory tests until it is run
or explained. The examples run on SQLite, in a directory of their own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import runpy
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import httpx
import pytest

from cdp.cli import main as cdp_cli
from tests.crash import Site, free_port, serving
from tests.helpers import until
from tests.test_crash_outbox import nats_server

REPO = Path(__file__).resolve().parent.parent
DOCS = (
    "README.md",
    "docs/segments.md",
    "docs/webhooks.md",
    "docs/design.md",
    "docs/testing.md",
    "docs/performance.md",
    "docs/settings.md",
    "docs/features.md",
)
PORTS = (8500, 8600)  # this file's own range (tests/crash.py: free_port)

# The blocks this file runs, by document and first line (each test takes its block from here).
TRY_IT = ("README.md", ".venv/bin/cdp keys create --name crm-sync --role ingest")
SUBSCRIBE = ("docs/webhooks.md", "curl -s -X POST http://127.0.0.1:8000/v1/webhooks \\")
ROTATE = ("docs/webhooks.md", "curl -s -X POST http://127.0.0.1:8000/v1/webhooks/$ID/rotate-secret")
PAYLOAD = ("docs/webhooks.md", '{"event_id": "0196f6d2-8c1e-7a51-9d1e-3f0c4b5a6e7d"')
MERGE_PAYLOAD = ("docs/webhooks.md", '{"event_id": "...", "kind": "profile.merged"')
VERIFY = ("docs/webhooks.md", "import base64, hashlib, hmac, time")
LIFECYCLE = tuple(
    ("docs/segments.md", f'{{"name": "{name}"')
    for name in ("New customers", "Active", "Sleeping", "VIP", "Welcome", "Re-permission")
)
EXPORT_RECORD = ("docs/segments.md", "GET /v1/segments/{id}/exports/{export_id}")
ONE_CLICK = ("docs/segments.md", "List-Unsubscribe: <https://cdp.example/v1/unsubscribe/TOKEN>")
NATS_SETTING = ("docs/webhooks.md", "CDP_NATS_URL=nats://127.0.0.1:4222")
CONSUMER = ("docs/webhooks.md", "import json, nats")
RUN = {
    NATS_SETTING,
    CONSUMER,
    TRY_IT,
    SUBSCRIBE,
    ROTATE,
    PAYLOAD,
    MERGE_PAYLOAD,
    VERIFY,
    EXPORT_RECORD,
    ONE_CLICK,
}
RUN |= set(LIFECYCLE)

# The blocks not run, each with its reason.
NOT_RUN = {
    ("README.md", "make run"): "serves until stopped, after installing into .venv; the "
    "`cdp serve` it runs is started by every test here",
    ("README.md", "make test"): "the whole suite (and ruff): minutes on this machine; CI runs it",
    ("docs/segments.md", "POST   /v1/segments"): "a table of routes, not a command; the tests "
    "below call them",
    ("docs/segments.md", '{"all": [ ... ]}'): "the grammar of rules, not a value",
}

# Commands named in prose that are run here, with what each must print (placeholders filled in
# and optional parts left out by `test_the_cli_commands_named_in_the_prose_run`).
PROSE_RUN = {
    "cdp migrate": "migrations applied",
    "cdp keys list": "cli-admin",
    "cdp match": r"stored \d+ new suggestions",
    "cdp audit checkpoint": r"checkpoint: \d+ entries",
    "cdp audit export-checkpoints FILE": r"added \d+ checkpoints? to",
    "cdp audit verify --checkpoints FILE": r"^ok: .* (\d+) of \1 checkpoints from",
    "cdp audit verify": r"^ok: \d+ entries",
    "cdp events import FILE --source shop": r"recorded: 1 ",
    "cdp events seal": r"sealed \d+ event ids",
    "cdp keys split": r"split \d+ data keys",
    "cdp dsr run": r"completed: \d+",
    "cdp dispatch --once": r"^done",
    "cdp webhooks replay --since 2026-11-22T00:00:00Z [--subscription ID] [--stream]": (
        r"requeued \d+ deliveries"
    ),
    "cdp webhooks prune [--older-than DAYS] [--dead-older-than DAYS]": r"deleted \d+ deliveries",
}

# Commands named in prose that are not run by `test_the_cli_commands_named_in_the_prose_run`
# (by what they start with), each with its reason. Their options are checked all the same.
PROSE_NOT_RUN = {
    "cdp": "the command itself, run by every test here",
    "cdp serve": "started by each test here that serves (--port: the Try it test)",
    "cdp dsr worker": "runs until interrupted; each pass is `cdp dsr run`'s, run here",
    "cdp serve --workers": "PostgreSQL only: tests/test_serve_workers.py starts two workers",
    "cdp demo": "run by the segments test (3,000 customers)",
    "cdp retention run": "needs customers idle for a period; tests/test_retention.py runs it, "
    "--dry-run, --ids and --limit included",
    "cdp demo --customers": "tens of thousands of customers: minutes",
    "cdp keys create": "run by the Try it block",
    "cdp keys rotate-master": "needs a new master key and every service restarted: "
    "tests/test_keys.py and tests/test_crash_consistency.py run it",
    "cdp import": "its files, encodings and rejects: tests/test_import*.py",
    "cdp events import": "run with its FILE and --source above",
    "cdp dispatch": "runs until stopped; `cdp dispatch --once` is run",
    "cdp webhooks replay": "run with --since above",
    "cdp webhooks prune": "run above",
    "python -m bench": "benchmarks: minutes to hours, and their figures are measurements, "
    "not claims a test can hold; tests/test_bench_smoke.py runs some at a tiny scale",
}


@dataclass(frozen=True)
class Block:
    doc: str
    line: int  # where it starts, 1-based
    lang: str  # "" for an indented block
    text: str
    span: range  # the file's lines it takes, fences included (0-based)

    @property
    def first(self) -> str:
        return next(line.strip() for line in self.text.splitlines() if line.strip())


def blocks(doc: str) -> list[Block]:
    """The fenced and the indented code blocks of a markdown file, in order."""
    lines = (REPO / doc).read_text(encoding="utf-8").split("\n")
    found: list[Block] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            text = "\n".join(lines[i + 1 : end])
            found.append(Block(doc, i + 2, line[3:].strip(), text, range(i, end + 1)))
            i = end + 1
            continue
        if line.startswith("    ") and line.strip() and (i == 0 or not lines[i - 1].strip()):
            end = i
            while end < len(lines) and (lines[end].startswith("    ") or not lines[end].strip()):
                end += 1
            text = textwrap.dedent("\n".join(lines[i:end])).strip("\n")
            found.append(Block(doc, i + 1, "", text, range(i, end)))
            i = end
            continue
        i += 1
    return found


def block(key: tuple[str, str]) -> Block:
    doc, first = key
    matches = [b for b in blocks(doc) if b.first.startswith(first)]
    assert len(matches) == 1, f"{doc}: no single example starting {first!r} any more"
    return matches[0]


def prose_commands(doc: str) -> list[tuple[int, str]]:
    """`cdp ...` and `python -m bench...` written in the prose (code spans, outside blocks)."""
    lines = (REPO / doc).read_text(encoding="utf-8").split("\n")
    for b in blocks(doc):  # blank the blocks out, keeping line numbers
        for i in b.span:
            lines[i] = ""
    text = "\n".join(lines)
    text = re.sub(r"``.+?``", lambda m: "\n" * m.group().count("\n"), text, flags=re.S)
    out = []
    for m in re.finditer(r"`([^`]+)`", text):
        span = " ".join(m.group(1).split())
        span = re.sub(r"^(\.venv/bin/|CDP_\w+=\S+ )", "", span)
        if re.match(r"(cdp|python -m bench(\.[\w<>]+)?)( |$)", span):
            out.append((text[: m.start()].count("\n") + 1, span))
    return out


# -- running the examples ------------------------------------------------------------------------


def as_shell(text: str, base: str, tmp: Path) -> str:
    """A documented shell example as a new user runs it, against this test's server: `cdp` is
    this tree's, the port is the one served, /tmp is the test's, and every curl also prints
    the status code after the body (a line `<<status NNN>>`)."""
    # /tmp first: the interpreter's own path may lie under /tmp (a CI clone in /tmp/ci-clone)
    text = text.replace("/tmp/", f"{tmp}/")
    cli = f"{shlex.quote(sys.executable)} -m cdp.cli"
    text = text.replace(".venv/bin/cdp", cli).replace("http://127.0.0.1:8000", base)
    return text.replace("curl -s ", "curl -s -w '\\n<<status %{http_code}>>\\n' ")


def run_shell(site: Site, text: str, base: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", as_shell(text, base, site.tmp)],
        env=site.env(**env),
        cwd=site.tmp,
        capture_output=True,
        text=True,
        timeout=120,
    )


def answers(stdout: str) -> list[tuple[int, Any]]:
    """(status, JSON body) of each curl call in a shell example's output, in order."""
    out = []
    for body, status in re.findall(r"(.*?)\n<<status (\d{3})>>\n", stdout, flags=re.S):
        out.append((int(status), json.loads(body) if body.strip() else None))
    return out


def key_of(site: Site, name: str, role: str) -> str:
    done = site.cli("keys", "create", "--name", name, "--role", role)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def port_for(test: str) -> int:
    """A free port of this file's range, drawn the same way each run for the same test."""
    return free_port(random.Random(f"docs/{test}"), *PORTS)


@pytest.fixture
def backend() -> str:
    """The examples run on SQLite, as a new user's first `cdp serve` does (the docs name no
    PostgreSQL example; the behaviours themselves are tested on both databases elsewhere)."""
    return "sqlite"


@pytest.fixture
def pg_database() -> None:
    """No PostgreSQL database to make and drop for them (conftest's `sites` asks for one)."""
    return None


# -- the inventory -------------------------------------------------------------------------------


# Names in the code's strings that are not settings: a JetStream stream's default name, the
# crash tests' kill switch, and what `cdp serve --workers` tells its own workers.
NOT_SETTINGS = {"CDP_CONSENT", "CDP_DSR_CRASH_AT", "CDP_SERVE_WORKERS"}


def test_the_settings_table_names_every_setting_the_code_reads():
    """docs/settings.md: one row per setting, none the code does not read, none left out."""
    read = set()
    for package in ("cdp", "consent", "api"):
        for path in (REPO / package).rglob("*.py"):
            read |= set(re.findall(r"[\"'](CDP_[A-Z_]+)[\"']", path.read_text()))
    rows = re.findall(r"^\| `(CDP_[A-Z_]+)` \|", (REPO / "docs/settings.md").read_text(), re.M)
    assert len(rows) == len(set(rows)), "a setting with two rows"
    assert set(rows) == read - NOT_SETTINGS


def test_every_document_is_read_here():
    """A document added to docs/ (the README's long sections moved there) is held to its
    examples and commands like the others, not left out of this file unnoticed."""
    found = {"README.md"} | {str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md")}
    assert found == set(DOCS)


def test_every_example_is_run_or_skipped_for_a_stated_reason():
    named = RUN | set(NOT_RUN)
    for doc in DOCS:
        for b in blocks(doc):
            keys = [k for k in named if k[0] == doc and b.first.startswith(k[1])]
            assert keys, f"{doc}:{b.line}: an example neither run nor skipped with a reason"
            assert len(keys) == 1, f"{doc}:{b.line}: named twice here: {keys}"
    for key in named:
        block(key)  # each still in the docs, once
    assert all(reason.strip() for reason in NOT_RUN.values())


def test_every_command_in_the_prose_is_run_or_skipped_for_a_stated_reason():
    def skipped(span: str) -> bool:
        # a key names the command and what it starts with; `cdp` alone only itself
        return any(
            span == k or (k != "cdp" and span.startswith((k + " ", k + "."))) for k in PROSE_NOT_RUN
        )

    spans = {(doc, line, span) for doc in DOCS for line, span in prose_commands(doc)}
    unaccounted = [
        f"{d}:{n}: {s}" for d, n, s in sorted(spans) if s not in PROSE_RUN and not skipped(s)
    ]
    assert not unaccounted, "commands neither run nor skipped with a reason:\n" + "\n".join(
        unaccounted
    )
    assert len(spans) > 40, "prose_commands reads too few commands: has the markdown changed?"


def click_command(words: list[str]) -> tuple[click.Command, list[str]]:
    """The command a `cdp` command line names, and the words after it."""
    command: click.Command = cdp_cli
    rest = list(words)
    while rest and isinstance(command, click.Group) and rest[0] in command.commands:
        command = command.commands[rest.pop(0)]
    return command, rest


def test_every_command_in_the_prose_exists_with_its_options():
    """Each `cdp ...` written in the docs names a command that exists and only its options;
    each `python -m bench...` a module whose argument parser has the options used."""
    problems = []
    bench: dict[str, set[str]] = {}
    for doc in DOCS:
        for line, span in prose_commands(doc):
            words = span.split()
            if words[0] == "python":
                module = words[2]
                if "<" not in module:
                    bench.setdefault(module, set()).update(w for w in words if w.startswith("--"))
                continue
            command, rest = click_command(words[1:])
            if isinstance(command, click.Group):  # `cdp`, `cdp keys`: a group as a whole
                if rest:
                    problems.append(f"{doc}:{line}: no command {span!r}")
                continue
            known = {o for p in command.params for o in getattr(p, "opts", [])}
            for word in rest:
                option = word.strip("[]").split("=")[0]
                if option.startswith("--") and option not in known:
                    problems.append(f"{doc}:{line}: {span!r}: no option {option}")
    for module, options in sorted(bench.items()):
        known = {o for a in bench_parser(module)._actions for o in a.option_strings}
        problems += [f"python -m {module}: no option {o}" for o in options - known]
    assert not problems, "\n".join(problems)
    assert bench, "the docs name no benchmark any more: is prose_commands still reading them?"


class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def bench_parser(module: str) -> argparse.ArgumentParser:
    """The argument parser `python -m module` builds, caught as it parses (nothing runs)."""

    def caught(parser: argparse.ArgumentParser, *_: Any, **__: Any) -> None:
        raise _Parsed(parser)

    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        mp.setattr(argparse.ArgumentParser, "parse_args", caught)
        mp.setattr(sys, "argv", [module])
        # another test of the same worker may have imported the module (tests/test_bench_smoke):
        # runpy then warns that it runs it again as __main__, which is all this needs
        warnings.filterwarnings("ignore", "'bench.*found in sys.modules", RuntimeWarning)
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=False)
        except _Parsed as parsed:
            return parsed.parser
    raise AssertionError(f"python -m {module} parsed no arguments")


def test_the_makefile_has_the_targets_the_docs_name():
    targets = set(re.findall(r"^([a-z]+):", (REPO / "Makefile").read_text(), flags=re.M))
    named = set()
    for doc in DOCS:
        text = (REPO / doc).read_text(encoding="utf-8")
        named |= set(re.findall(r"`make ([a-z]+)`", text))
        named |= {b.first.split()[1] for b in blocks(doc) if b.first.startswith("make ")}
    assert named and named <= targets, named - targets


# -- README: Try it --------------------------------------------------------------------------


# A new user's settings: none (the database ./cdp.db, a development key made in ./.cdp/).
NEW_USER = {"CDP_DATABASE_URL": "", "CDP_MASTER_KEY": "", "CDP_DEV_KEY_DIR": ""}


async def test_readme_try_it_as_written(backend, sites):
    site = await sites("try-it")
    port = port_for("try-it")
    base = f"http://127.0.0.1:{port}"
    server = await serving(site, port, **NEW_USER)
    example = block(TRY_IT).text

    done = run_shell(site, example, base, **NEW_USER)
    assert done.returncode == 0, done.stderr[-3000:]
    ingest_key = (site.tmp / "ingest.key").read_text().strip()
    admin_key = (site.tmp / "admin.key").read_text().strip()
    assert ingest_key.startswith("cdp_") and admin_key.startswith("cdp_"), done.stderr[-3000:]
    (created, record), (read, profile) = answers(done.stdout)
    assert created == 201 and record["created"] is True, record  # API.md: 201, a new profile
    assert read == 200 and profile["profile_id"] == record["profile_id"]
    identities = {(i["kind"], i["value"]) for i in profile["identities"]}
    assert ("email", "anna.ivanova@example.com") in identities  # trimmed and lower-cased
    assert ("phone", "+79161234567") in identities  # E.164
    assert ("external_id", "C-1001") in identities
    api_md = {"profile_id", "identities", "first_name", "last_name", "birth_date"}
    api_md |= {"postal_address", "postcode", "city", "country", "jurisdiction", "traits"}
    api_md |= {"stats", "consents", "merged_from"}  # API.md, GET /v1/profiles?email=
    assert api_md <= set(profile), api_md - set(profile)
    assert {"items", "contactable"} <= set(profile["consents"])
    assert (profile["first_name"], profile["last_name"], profile["country"]) == (
        "Анна",
        "Иванова",
        "RU",
    )

    # "run again, `cdp keys create` refuses the name on stderr, exits 1, and the `tail -1`
    # above writes an empty file ... `cdp keys list` shows the names taken"
    again = site.cli("keys", "create", "--name", "crm-sync", "--role", "ingest", **NEW_USER)
    assert again.returncode == 1 and again.stdout == "" and "exists" in again.stderr
    rerun = run_shell(site, example, base, **NEW_USER)
    assert (site.tmp / "ingest.key").read_text() == ""
    assert [status for status, _ in answers(rerun.stdout)] == [401, 401]
    listed = site.cli("keys", "list", **NEW_USER)
    assert {"crm-sync", "me"} <= {line.split()[0] for line in listed.stdout.splitlines()}

    # "`cdp demo` ... fills only an empty database and refuses one that holds a profile, such
    # as Anna's"
    demo = site.cli("demo", **NEW_USER)
    assert demo.returncode == 1 and "not empty" in demo.stderr
    async with httpx.AsyncClient(base_url=base, timeout=30) as c:
        # "`cdp serve --port 8001` serves on another port; the links it hands out follow it"
        link = await c.post(
            "/v1/preference-links",
            json={"email": "anna.ivanova@example.com"},
            headers=bearer(admin_key),
        )
        assert link.status_code in (200, 201), link.text
        assert link.json()["url"].startswith(f"{base}/preferences/")
        # The paragraph on the OpenAPI document and the HTTP answers around it.
        document = await c.get("/schema/openapi.json")
        assert document.status_code == 200 and document.json()["openapi"].startswith("3.1")
        assert (await c.get("/schema")).status_code == 200
        anonymous = await c.get("/v1/segments")
        assert anonymous.status_code == 401
        assert anonymous.headers["content-type"].startswith("application/problem+json")
        assert anonymous.headers["www-authenticate"].startswith("Bearer")
        wrong_method = await c.put("/health")
        assert wrong_method.status_code == 405 and "GET" in wrong_method.headers["allow"]
        options = await c.options("/v1/profiles")
        assert options.status_code in (200, 204) and "POST" in options.headers["allow"]
        assert (await c.head("/health")).status_code == 200
        assert (await c.get("/health")).json() == {"status": "ok"}

    # "creates a development master key in ./.cdp/ with a warning, applies migrations, serves
    # on http://127.0.0.1:8000 and says so once it answers"; Ctrl+C stops it.
    assert (site.tmp / ".cdp" / "master.key").is_file() and (site.tmp / "cdp.db").is_file()
    server.send_signal(signal.SIGINT)
    _, said = server.communicate(timeout=60)  # it ends (click says "Aborted!": left alone)
    assert "Traceback" not in said, said[-3000:]
    assert "dev_master_key_created" in said and f"serving on {base}" in said, said[-3000:]


async def test_the_cli_commands_named_in_the_prose_run(sites, tmp_path):
    """The commands the README and docs name in passing, run on a small base: each exits 0
    and says what the docs say it does."""
    site = await sites("cli")
    key_of(site, "cli-admin", "admin")
    async with site.opened() as (_p, client, keys):
        for email in ("a@example.org", "b@example.org"):
            r = await client.post(
                "/v1/profiles",
                json={"source": "crm", "email": email, "first_name": "Анна"},
                headers=keys["ingest"],
            )
            assert r.status_code == 201, r.text
    order = {
        "event_id": "ord-77",
        "type": "purchase",
        "occurred_at": "2026-11-01T12:00:00Z",
        "email": "a@example.org",
        "amount": "4500.00",
        "currency": "RUB",
        "category": "shoes",
    }
    orders = tmp_path / "orders.ndjson"
    orders.write_text(json.dumps(order) + "\n")
    checkpoints = tmp_path / "checkpoints.jsonl"
    named = {span for doc in DOCS for _, span in prose_commands(doc)}
    assert set(PROSE_RUN) <= named, f"the docs no longer name {set(PROSE_RUN) - named}"

    def argv(written: str) -> list[str]:
        words = re.sub(r"\[[^]]*\]", "", written).split()[1:]  # optional parts left out
        file = checkpoints if "checkpoints" in written else orders
        return [str(file) if w == "FILE" else w for w in words]

    # In three rounds, each round's commands side by side (the later rounds read what the
    # earlier ones wrote): the rest are independent, and each costs a process start.
    later = ("cdp audit export-checkpoints FILE", "cdp audit verify")
    last = ("cdp audit verify --checkpoints FILE",)
    rounds = [[w for w in PROSE_RUN if w not in later + last], list(later), list(last)]
    for commands in rounds:
        results = await asyncio.gather(*(asyncio.to_thread(site.cli, *argv(w)) for w in commands))
        for written, done in zip(commands, results, strict=True):
            assert done.returncode == 0, f"{written}: {done.stderr[-2000:]}"
            assert re.search(PROSE_RUN[written], done.stdout, flags=re.M), (written, done.stdout)
    # "running the same file again records nothing twice"
    again = site.cli("events", "import", str(orders), "--source", "shop")
    assert "recorded: 0" in again.stdout and "already recorded: 1" in again.stdout, again.stdout


# -- docs/webhooks.md ------------------------------------------------------------------------


def documented_verify() -> Callable[..., None]:
    scope: dict[str, Any] = {}
    exec(compile(block(VERIFY).text, "docs/webhooks.md", "exec"), scope)
    return scope["verify"]


def documented_keys(key: tuple[str, str]) -> set[str]:
    text = block(key).text
    return set(json.loads(text[text.index("{") :]))


async def test_webhooks_doc_subscribe_rotate_deliver_and_verify(backend, sites, receiver):
    site = await sites("webhooks", CDP_WEBHOOK_ALLOW_PRIVATE="1")
    port = port_for("webhooks")
    base = f"http://127.0.0.1:{port}"
    await serving(site, port, CDP_WEBHOOK_DISPATCHER="on", CDP_WEBHOOK_POLL_MS="20")
    admin = key_of(site, "wh-admin", "admin")
    ingest = key_of(site, "wh-ingest", "ingest")

    done = run_shell(site, block(SUBSCRIBE).text, base, ADMIN_KEY=admin)
    ((status, sub),) = answers(done.stdout)
    assert status == 201, sub
    assert sub["secret"].startswith("whsec_") and sub["include_address"] is False
    sent = ["opt_out", "consent.withdrawn", "erasure.completed", "suppression.added"]
    assert sorted(sub["kinds"]) == sorted(sent) and sub["description"] == "email service provider"

    async with httpx.AsyncClient(base_url=base, timeout=30) as c:
        listed = (await c.get("/v1/webhooks", headers=bearer(admin))).json()
        assert sub["id"] in {s["id"] for s in listed["items"]}
        assert not any("secret" in s for s in listed["items"]), "the list shows no secrets"

        done = run_shell(site, block(ROTATE).text, base, ADMIN_KEY=admin, ID=sub["id"])
        ((status, rotated),) = answers(done.stdout)
        assert status == 200, rotated
        assert rotated["secret"].startswith("whsec_") and rotated["secret"] != sub["secret"]
        expires = datetime.fromisoformat(rotated["previous_secret_expires_at"])
        assert (expires - datetime.fromisoformat(sub["created_at"])).total_seconds() >= 86400
        assert (
            "secret" not in (await c.get(f"/v1/webhooks/{sub['id']}", headers=bearer(admin))).json()
        )

        # A delivery, checked with the documented `verify` and against the documented payload.
        made = await c.post(
            "/v1/webhooks",
            json={"url": receiver.url, "kinds": ["opt_out", "profile.merged"]},
            headers=bearer(admin),
        )
        assert made.status_code == 201, made.text
        secret = made.json()["secret"]
        r = await c.post(
            "/v1/profiles",
            json={"source": "crm", "email": "wh.one@example.org"},
            headers=bearer(ingest),
        )
        assert r.status_code == 201, r.text
        r = await c.post(
            "/v1/opt-outs",
            json={"email": "wh.one@example.org", "source": "web"},
            headers=bearer(ingest),
        )
        assert r.status_code == 200, r.text
        await until(lambda: receiver.requests, "the opt-out's delivery")
        verify = documented_verify()
        got = receiver.requests[0]
        verify(secret, got.headers, got.body)
        with pytest.raises(ValueError, match="forged"):
            verify(secret, got.headers, got.body.replace(b"opt_out", b"opt_in_"))
        assert got.payload["kind"] == "opt_out"
        assert set(got.payload) == documented_keys(PAYLOAD), "the payload as documented"
        assert got.headers["webhook-id"] == got.payload["event_id"]
        assert got.headers["content-type"] == "application/json"

        # Rotation with an overlap: both secrets sign, the new one first; one match is enough.
        rotated = await c.post(
            f"/v1/webhooks/{made.json()['id']}/rotate-secret",
            json={"overlap_seconds": 86400},
            headers=bearer(admin),
        )
        assert rotated.status_code == 200, rotated.text
        # A merge: two customers, then a record naming both.
        for record in (
            {"source": "crm", "email": "wh.two@example.org"},
            {"source": "shop", "phone": "+79161230002"},
            {"source": "crm", "email": "wh.two@example.org", "phone": "+79161230002"},
        ):
            r = await c.post("/v1/profiles", json=record, headers=bearer(ingest))
            assert r.status_code in (200, 201), r.text

        def merges() -> list:
            return [q for q in receiver.requests if q.payload["kind"] == "profile.merged"]

        await until(merges, "the merge's delivery")
        (merged,) = merges()
        assert set(merged.payload) == documented_keys(MERGE_PAYLOAD)
        assert merged.payload["source"] == "deterministic"
        signatures = merged.headers["webhook-signature"].split()
        assert len(signatures) == 2
        verify(rotated.json()["secret"], merged.headers, merged.body)
        verify(secret, merged.headers, merged.body)

        # "newest first: status, attempts with status codes, `lag_ms`"; then DELETE: 204, and
        # the API no longer shows the subscription or its deliveries.
        path = f"/v1/webhooks/{made.json()['id']}"
        listed = (await c.get(f"{path}/deliveries", headers=bearer(admin))).json()["items"]
        assert listed[0]["kind"] == "profile.merged"
        assert {"status", "attempts", "lag_ms", "history"} <= set(listed[0])
        assert (await c.delete(path, headers=bearer(admin))).status_code == 204
        assert (await c.get(path, headers=bearer(admin))).status_code == 404
        assert (await c.get(f"{path}/deliveries", headers=bearer(admin))).status_code == 404


class _Consumed(Exception):
    pass


async def test_webhooks_doc_nats_consumer_as_written(sites, tmp_path):
    """The JetStream setting and the documented consumer, its URL aside, with the reader's
    `apply` (which ends the loop once it has the opt-out's events): the stream CDP_CONSENT holds
    them under `cdp.consent.>`, each the payload above, never with the address. Skipped where
    nats-server is not installed (tests/test_crash_outbox.py's server)."""
    setting = block(NATS_SETTING).text.split("#")[0].strip()
    name, documented_url = setting.split("=", 1)
    async with nats_server(random.Random("docs/nats-server"), tmp_path) as url:
        if url is None:
            pytest.skip("nats-server or the nats client is not installed")
        site = await sites("nats")
        port = port_for("nats")
        await serving(
            site, port, CDP_WEBHOOK_DISPATCHER="on", CDP_WEBHOOK_POLL_MS="20", **{name: url}
        )
        ingest = bearer(key_of(site, "nats-ingest", "ingest"))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            r = await c.post(
                "/v1/opt-outs",
                json={"email": "nats.one@example.org", "source": "web"},
                headers=ingest,
            )
            assert r.status_code == 200, r.text

        import nats

        nc = await nats.connect(url)
        try:
            js = nc.jetstream()

            async def published() -> int:
                try:
                    return (await js.stream_info("CDP_CONSENT")).state.messages
                except Exception:
                    return 0

            for _ in range(1200):
                if await published() >= 3:  # opt_out, consent.withdrawn, suppression.added
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("nothing was published to CDP_CONSENT")
        finally:
            await nc.close()

        applied: list[dict] = []

        def apply(event: dict) -> None:
            applied.append(event)
            if {e["kind"] for e in applied} >= {"opt_out", "consent.withdrawn"}:
                raise _Consumed

        scope: dict[str, Any] = {"apply": apply}
        code = block(CONSUMER).text.replace(documented_url, url)
        exec(compile(code, "docs/webhooks.md", "exec"), scope)
        with pytest.raises(_Consumed):
            await asyncio.wait_for(scope["consume"](), 60)
    opt_out = next(e for e in applied if e["kind"] == "opt_out")
    assert set(opt_out) == documented_keys(PAYLOAD) and "address" not in opt_out


# -- docs/segments.md ------------------------------------------------------------------------


def further_examples() -> list[dict]:
    text = (REPO / "docs/segments.md").read_text(encoding="utf-8")
    paragraph = text[text.index("Further examples:") :].split("\n\n", 1)[0]
    rules = [json.loads(" ".join(s.split())) for s in re.findall(r"`(\{[^`]+\})`", paragraph)]
    assert len(rules) >= 3, paragraph
    return rules


async def test_segments_doc_recipes_on_the_demo_base(backend, sites):
    """README: "`cdp demo` fills an empty database with a few thousand synthetic customers ...
    (the lifecycle segments of `docs/segments.md` each pick out a part of them)"; then the
    recipes, members, stats, export and its record, and one-click unsubscribe as written."""
    site = await sites("segments")
    demo = site.cli("demo")
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert re.search(r"customers: 3000\b", demo.stdout), demo.stdout
    port = port_for("segments")
    base = f"http://127.0.0.1:{port}"
    await serving(site, port)
    marketing = bearer(key_of(site, "seg-marketing", "marketing"))
    everyone = {"purpose": "marketing", "channel": "email", "rules": {"all": []}}
    async with httpx.AsyncClient(base_url=base, timeout=60) as c:
        r = await c.post("/v1/segments", json={"name": "everyone", **everyone}, headers=marketing)
        assert r.status_code == 201, r.text
        base_size = (await c.get(f"/v1/segments/{r.json()['id']}/stats", headers=marketing)).json()
        saved = []
        for key in LIFECYCLE:
            definition = json.loads(block(key).text)
            r = await c.post("/v1/segments", json=definition, headers=marketing)
            assert r.status_code == 201, (key, r.text)
            seg = r.json()
            saved.append(seg["id"])
            stats = (await c.get(f"/v1/segments/{seg['id']}/stats", headers=marketing)).json()
            assert 0 < stats["matched"] < base_size["matched"], (definition["name"], stats)
            assert sum(stats["excluded"].values()) == stats["matched"] - stats["contactable"]
            page = await c.get(f"/v1/segments/{seg['id']}/members?limit=5", headers=marketing)
            assert page.status_code == 200
            for member in page.json()["items"]:
                assert set(member) == {"profile_id", "address", "unsubscribe_token", "first_name"}
        for rules in further_examples():
            r = await c.post(
                "/v1/segments/query", json={**everyone, "rules": rules}, headers=marketing
            )
            assert r.status_code == 200, (rules, r.text)

        listed = (await c.get("/v1/segments", headers=marketing)).json()["items"]
        assert [s["id"] for s in listed][1:] == saved, "oldest first"

        # An export and its record, as documented.
        seg_id = saved[0]
        stats = (await c.get(f"/v1/segments/{seg_id}/stats", headers=marketing)).json()
        export = await c.get(f"/v1/segments/{seg_id}/export?format=ndjson", headers=marketing)
        assert export.status_code == 200
        assert export.headers["content-type"].startswith("application/x-ndjson")
        lines = export.text.splitlines()
        assert len(lines) == stats["contactable"]
        record = await c.get(
            f"/v1/segments/{seg_id}/exports/{export.headers['x-export-id']}", headers=marketing
        )
        assert record.status_code == 200
        text = block(EXPORT_RECORD).text
        assert set(record.json()) == set(json.loads(text[text.index("\n{") :]))
        assert record.json()["rows"] == len(lines) and record.json()["finished_at"]
        csv = await c.get(f"/v1/segments/{seg_id}/export?format=csv", headers=marketing)
        assert csv.headers["content-type"].startswith("text/csv")
        assert csv.text.splitlines()[0] == "profile_id,address,unsubscribe_token,first_name"
        exports = (await c.get(f"/v1/segments/{seg_id}/exports", headers=marketing)).json()
        assert exports["items"][0]["format"] == "csv", "newest first"

        # The one-click headers: the URL GET shows a page and changes nothing; the RFC 8058
        # POST answers 200 without a redirect and the member is gone.
        assert "List-Unsubscribe=One-Click" in block(ONE_CLICK).text
        first = json.loads(lines[0])
        url = f"/v1/unsubscribe/{first['unsubscribe_token']}"
        page = await c.get(url)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        again = await c.get(f"/v1/segments/{seg_id}/members?limit=1", headers=marketing)
        assert again.json()["items"][0]["profile_id"] == first["profile_id"]
        clicked = await c.post(
            url,
            content=b"List-Unsubscribe=One-Click",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert clicked.status_code == 200, clicked.text
        after = await c.get(f"/v1/segments/{seg_id}/members?limit=1", headers=marketing)
        assert after.json()["items"][0]["profile_id"] != first["profile_id"]

        # DELETE -> 204; 404 from then on
        assert (await c.delete(f"/v1/segments/{seg_id}", headers=marketing)).status_code == 204
        assert (await c.get(f"/v1/segments/{seg_id}", headers=marketing)).status_code == 404


def test_curl_is_there():
    """The shell examples are run with curl and bash, as a reader runs them."""
    if os.environ.get("CI") != "true" and (not shutil.which("curl") or not shutil.which("bash")):
        pytest.skip("curl or bash is not installed")
    assert shutil.which("curl") and shutil.which("bash")
