"""Who a consent belongs to: an address (email or phone blind index) or a profile."""

from __future__ import annotations

import uuid
from collections.abc import Collection

from consent.policy import Policy

PROFILE_PREFIX = b"p:"


def profile_subject(profile_id: uuid.UUID) -> bytes:
    return PROFILE_PREFIX + profile_id.bytes


def is_profile_subject(subject: bytes) -> bool:
    return len(subject) == len(PROFILE_PREFIX) + 16 and subject.startswith(PROFILE_PREFIX)


def subject_profile_bytes(subject: bytes) -> bytes:
    """The profile id's 16 bytes in a profile subject: `profile_subject`'s inverse."""
    return bytes(subject[len(PROFILE_PREFIX) :])


def subject_profile_id(subject: bytes) -> uuid.UUID:
    return uuid.UUID(bytes=subject_profile_bytes(subject))


def channels_for(policy: Policy, kind: str) -> list[str]:
    """Channels whose messages go to an address of this kind (email, phone, profile)."""
    return [name for name, ch in policy.channels.items() if ch.address == kind]


def expand_channel(policy: Policy, kind: str, channel: str) -> list[str]:
    if channel == "*":
        return channels_for(policy, kind)
    return [channel] if policy.address_kind(channel) == kind else []


def via_profile(subject: tuple[str, bytes], named: Collection[tuple[str, bytes]]) -> bool | None:
    """Whether a request reached this address through its customer rather than naming it
    (consent_ledger.via_profile): it is not among the addresses the request `named`. None for
    the profile's own subject (push, messenger)."""
    if subject[0] == "profile":
        return None
    return subject not in named
