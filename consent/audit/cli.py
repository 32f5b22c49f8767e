"""`cdp audit ...`: verify the consent ledger, take signed checkpoints, export them to a file."""

from __future__ import annotations

import base64
import binascii
import sys
from pathlib import Path
from typing import Any

import click

from cdp.cli_support import run_on_platform


@click.group("audit")
def audit() -> None:
    """Consent ledger audit: verification and signed checkpoints."""


async def _verify_requests(p: Any) -> dict[str, Any]:
    from consent.audit.verify import snapshot
    from consent.dsr.consistency import requests_report

    async with snapshot(p.db) as conn:
        return await requests_report(conn)


@audit.command("verify")
@click.option(
    "--checkpoints",
    "checkpoint_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="an exported checkpoint file (JSON lines) to check the ledger against; without it, "
    "the checkpoints stored in the database are checked",
)
@click.option(
    "--public-key",
    "public_keys",
    multiple=True,
    help="with --checkpoints: only count checkpoints signed by this key (base64; repeatable)",
)
def audit_verify(checkpoint_file: Path | None, public_keys: tuple[str, ...]) -> None:
    """Exit 0 when the ledger verifies, 1 otherwise, naming the first bad entry."""
    from consent.audit.checkpoints import CheckpointFileError, read_checkpoint_file
    from consent.audit.verify import AuditReport

    trusted: set[bytes] | None = None
    try:
        trusted = {base64.b64decode(k, validate=True) for k in public_keys} or None
    except (binascii.Error, ValueError):
        raise click.BadParameter("not base64", param_hint="--public-key") from None
    try:
        from_file = read_checkpoint_file(checkpoint_file) if checkpoint_file else None
    except CheckpointFileError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)

    async def go(p: Any) -> AuditReport:
        from consent.audit.checkpoints import list_checkpoints
        from consent.audit.signing import signer_for
        from consent.audit.verify import snapshot, verify_ledger

        async with snapshot(p.db) as conn:
            if from_file is not None:
                return await verify_ledger(conn, from_file, policy=p.policy, trusted_keys=trusted)
            stored = await list_checkpoints(conn)
            keys = {signer_for(p.settings).public_key}
            return await verify_ledger(conn, stored, policy=p.policy, trusted_keys=keys)

    report = run_on_platform(go)
    requests = run_on_platform(_verify_requests)
    if requests["first_invalid_seq"] is not None:
        click.echo(
            f"FAILED: request transitions break at seq {requests['first_invalid_seq']}: "
            f"{requests['reason']}"
        )
        sys.exit(1)
    if not requests["ok"]:
        click.echo(
            f"FAILED: {requests['requests_mismatched']} erasure requests disagree with their "
            "transitions: " + ", ".join(requests["mismatched_request_ids"])
        )
        sys.exit(1)
    where = f"from {checkpoint_file}" if checkpoint_file else "stored in the database"
    for r in report.checkpoints:
        if r.status != "ok":
            cp = r.checkpoint
            click.echo(f"checkpoint at {cp.entries} entries ({cp.key_id}): {r.status}: {r.detail}")
    state = report.state
    if report.ok:
        assert state is not None
        matched = sum(1 for r in report.checkpoints if r.status == "ok")
        click.echo(
            f"ok: {report.chain.entries} entries, head {report.chain.head_hash}; "
            f"{matched} of {len(report.checkpoints)} checkpoints {where} match; "
            f"{state.states} consent states and {state.suppressions} suppressions agree "
            "with the ledger"
        )
        return
    if not report.chain.ok or report.failing:
        at = f" at seq {report.first_invalid_seq}" if report.first_invalid_seq else ""
        click.echo(
            f"FAILED{at}: {report.reason} ({report.chain.entries} entries verified by the chain)"
        )
    if state is not None and not state.ok:
        _echo_state(state)
    sys.exit(1)


def _echo_state(state: Any) -> None:
    from consent.audit.findings import describe

    click.echo(f"FAILED: {state.summary()}")
    for example in state.to_json()["examples"]:
        click.echo(f"  {describe(example)}")
    if state.mismatches > len(state.examples):
        click.echo(f"  ... and {state.mismatches - len(state.examples)} more")


@audit.command("checkpoint")
def audit_checkpoint() -> None:
    """Verify the entries since the last checkpoint, then sign and store the ledger head."""
    from consent.audit.checkpoints import ChainBrokenError, create_checkpoint

    try:
        cp = run_on_platform(create_checkpoint)
    except ChainBrokenError as exc:
        click.echo(f"FAILED: {exc}; no checkpoint written")
        sys.exit(1)
    assert cp is not None
    click.echo(f"checkpoint: {cp.entries} entries, head {cp.head_hash.hex()}")
    click.echo(f"signed by key {cp.key_id} (Ed25519 public key, base64):")
    click.echo(base64.b64encode(cp.public_key).decode())


@audit.command("export-checkpoints")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def audit_export(file: Path) -> None:
    """Append to FILE (JSON lines) the signed checkpoints it does not hold yet.

    Keep FILE outside the database and its backups: it is what proves a later rewrite of the
    ledger. Lines already in FILE are never changed or removed.
    """
    from consent.audit.checkpoints import CheckpointFileError, export_checkpoints
    from consent.audit.signing import signer_for

    async def go(p: Any) -> tuple[int, int, str]:
        added, skipped = await export_checkpoints(p, file)
        return added, skipped, signer_for(p.settings).public_key_b64

    try:
        added, skipped, public_key = run_on_platform(go)
    except CheckpointFileError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    click.echo(f"added {added} checkpoints to {file}")
    if skipped:
        click.echo(f"skipped {skipped} checkpoints not signed by the configured key")
    click.echo(f"public key (Ed25519, base64): {public_key}")
