"""What an access request says about the processing itself, besides the data held (GDPR art.
15(1)(a), (d); 152-FZ art. 14(7), items 2, 3 and 7): for what purposes the customer's data are
processed and on what legal basis on each channel, under their jurisdiction's policy; how long
they are kept (the retention period, where the operator set one); and the deadlines of their
requests. Read from the policy that answers, as every decision is, and named by its version.

A purpose the jurisdiction's policy gives no basis on any channel is not processed there and is
left out. `retention.inactive_days` null: the operator set no period, and the data are kept
until the customer asks for their erasure.
"""

from __future__ import annotations

from typing import Any

from consent.policy import Policy


def processing_notice(policy: Policy, jurisdiction: str | None) -> dict[str, Any]:
    """The notice for a customer of `jurisdiction` (the default jurisdiction where the policy
    has no file for theirs, as their requests and contacts are decided)."""
    code = jurisdiction if jurisdiction in policy.jurisdictions else policy.default_jurisdiction
    j = policy.jurisdictions[code]
    purposes = []
    for name, purpose in sorted(policy.purposes.items()):
        bases = {
            channel: basis
            for channel in policy.channels
            if (basis := policy.basis(code, name, channel)) is not None
        }
        if bases:
            purposes.append(
                {
                    "purpose": name,
                    "description": purpose.description,
                    "advertising": purpose.advertising,
                    "legal_basis": bases,
                    "consent_valid_days": policy.consent_valid_days(code, name),
                }
            )
    return {
        "jurisdiction": code,
        "laws": list(j.laws),
        "policy_version": policy.version,
        "purposes": purposes,
        "retention": {"inactive_days": j.retention.inactive_days},
        "request_deadlines": {
            kind: {
                "period": d.period,
                "unit": d.unit,
                "extension": d.extension,
                "extension_unit": d.extension_unit,
            }
            for kind, d in sorted(j.deadlines.items())
        },
    }
