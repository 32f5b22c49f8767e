"""Who a consent belongs to: an address (email or phone blind index) or a profile."""

from __future__ import annotations

import uuid

from consent.policy import Policy

PROFILE_PREFIX = b"p:"


def profile_subject(profile_id: uuid.UUID) -> bytes:
    return PROFILE_PREFIX + profile_id.bytes


def channels_for(policy: Policy, kind: str) -> list[str]:
    """Channels whose messages go to an address of this kind (email, phone, profile)."""
    return [name for name, ch in policy.channels.items() if ch.address == kind]


def expand_channel(policy: Policy, kind: str, channel: str) -> list[str]:
    if channel == "*":
        return channels_for(policy, kind)
    return [channel] if policy.address_kind(channel) == kind else []
