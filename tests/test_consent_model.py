"""Property test: random sequences of grants, withdrawals, opt-outs, merges and imports must
leave every address exactly as contactable as a simple reference model says."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdp.profiles.identifiers import parse_identifier
from cdp.profiles.service import upsert_one
from consent.optout import opt_out
from consent.schemas import ConsentIn, EvidenceIn
from consent.service import address_decision, record_consent

BASE = datetime(2026, 1, 1, tzinfo=UTC)
ADDRESSES = 3

op = st.one_of(
    st.tuples(st.just("grant"), st.integers(0, ADDRESSES - 1), st.integers(0, 20)),
    st.tuples(st.just("withdraw"), st.integers(0, ADDRESSES - 1), st.integers(0, 20)),
    st.tuples(st.just("opt_out"), st.integers(0, ADDRESSES - 1), st.integers(0, 20)),
    st.tuples(st.just("import_grant"), st.integers(0, ADDRESSES - 1), st.integers(0, 20)),
    st.tuples(st.just("link"), st.integers(0, ADDRESSES - 1), st.integers(0, ADDRESSES - 1)),
)


@dataclass
class Model:
    """Latest event by time wins (a withdrawal wins a tie); an opt-out suppresses until a grant
    that occurred strictly later; only known addresses can be contacted."""

    known: set[int] = field(default_factory=set)
    state: dict[int, tuple[int, str]] = field(default_factory=dict)
    suppressed: dict[int, int] = field(default_factory=dict)

    def event(self, a: int, t: int, status: str) -> None:
        cur = self.state.get(a)
        if cur is None or t > cur[0] or (t == cur[0] and status == "withdrawn"):
            self.state[a] = (t, status)

    def contactable(self, a: int) -> bool:
        if a not in self.known:
            return False
        cur = self.state.get(a)
        if cur is None or cur[1] != "granted":
            return False
        return a not in self.suppressed or cur[0] > self.suppressed[a]


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(ops=st.lists(op, min_size=1, max_size=12))
async def test_contactability_matches_the_reference_model(platform, ops):
    run = uuid.uuid4().hex[:8]  # fresh addresses per example: examples share one database
    email = [f"m{run}.{i}@example.com" for i in range(ADDRESSES)]
    model = Model()
    evidence = EvidenceIn(wording_id="nl-v1", method="checkbox")
    for kind, a, arg in ops:
        if kind in ("grant", "withdraw"):
            status = "granted" if kind == "grant" else "withdrawn"
            ident = parse_identifier(platform.policy, platform.keys.indexer, email=email[a])
            await record_consent(
                platform,
                ConsentIn(
                    purpose="marketing",
                    channel="email",
                    status=status,
                    source="t",
                    occurred_at=BASE + timedelta(minutes=arg),
                    evidence=evidence if status == "granted" else None,
                ),
                ident,
                "t",
            )
            model.known.add(a)
            model.event(a, arg, status)
        elif kind == "opt_out":
            ident = parse_identifier(platform.policy, platform.keys.indexer, email=email[a])
            await opt_out(  # of the address's channel ('*' would reach the profile's others)
                platform,
                ident,
                channel="email",
                source="t",
                actor="t",
                occurred_at=BASE + timedelta(minutes=arg),
            )
            model.event(a, arg, "withdrawn")
            model.suppressed[a] = max(model.suppressed.get(a, arg), arg)
        elif kind == "import_grant":
            await upsert_one(
                platform,
                {
                    "source": "import",
                    "email": email[a],
                    "consents": [
                        {
                            "purpose": "marketing",
                            "channel": "email",
                            "status": "granted",
                            "occurred_at": (BASE + timedelta(minutes=arg)).isoformat(),
                            "evidence": {"wording_id": "nl-v1"},
                        }
                    ],
                },
                "t",
            )
            model.known.add(a)
            model.event(a, arg, "granted")
        else:  # link two addresses into one profile (a merge when both exist)
            await upsert_one(
                platform, {"source": "crm", "email": email[a], "external_id": f"{run}-{a}"}, "t"
            )
            await upsert_one(
                platform, {"source": "crm", "email": email[arg], "external_id": f"{run}-{a}"}, "t"
            )
            model.known.update({a, arg})
        async with platform.db.read() as conn:
            for i in range(ADDRESSES):
                bidx = platform.keys.indexer.email(email[i])
                got = await address_decision(conn, platform, "email", bidx, "marketing", "email")
                assert (got is None) == model.contactable(i), (ops, i, got)
