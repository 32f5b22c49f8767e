"""`cdp match [--min-score S]`: store match suggestions for review (never merges)."""

from __future__ import annotations

from typing import Any

import click

from cdp.matching import scoring


@click.command("match")
@click.option(
    "--min-score",
    type=click.FloatRange(0.0, 1.0),
    default=scoring.THRESHOLD,
    show_default=True,
    help="store pairs scoring at least this (0..1)",
)
def match(min_score: float) -> None:
    """Score candidate pairs of active profiles and store suggestions; never merges."""
    from cdp.cli_support import run, with_platform
    from cdp.matching.suggestions import run_matching

    async def go(p: Any):  # type: ignore[no-untyped-def]
        return await run_matching(p, min_score)

    result = run(lambda: with_platform(go))
    click.echo(
        f"profiles: {result.profiles}  candidate pairs: {result.candidates}  "
        f"at or above {min_score}: {result.matches}  "
        f"({result.candidates / max(result.seconds, 1e-9):,.0f} pairs/s)"
    )
    click.echo(f"stored {result.stored} new suggestions")
