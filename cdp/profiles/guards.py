"""Merge guards: identifier values that must never link two profiles (policy-configured)."""

from __future__ import annotations

from consent.policy import IdentityGuards


def junk_reason(kind: str, value: str, guards: IdentityGuards) -> str | None:
    """Why this normalised identifier is a placeholder, or None when it is usable."""
    lowered = value.strip().lower()
    if lowered in {v.lower() for v in guards.junk_values}:
        return "placeholder value, not used to link profiles"
    if kind == "email":
        local = lowered.split("@", 1)[0]
        if lowered in {v.lower() for v in guards.junk_emails} or local in {
            v.lower() for v in guards.junk_email_local_parts
        }:
            return "placeholder address, not used to link profiles"
    if kind == "phone" and value in set(guards.junk_phones):
        return "placeholder number, not used to link profiles"
    return None
