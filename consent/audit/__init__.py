"""Compliance audit of the consent ledger.

- `checkpoints`: signed checkpoints of the ledger head, their export file, periodic checkpoints.
- `signing`: the audit signing key (Ed25519, separate from the master key).
- `verify`: the chain recomputed and judged against checkpoints (database or exported file).
- `events`, `bundle`, `access`: audit queries (consent events, evidence bundle, access log).
- `cli`: `cdp audit verify | checkpoint | export-checkpoints`.

The hash chain itself (canonical encoding, fast verification) lives in `consent.chain`.
"""
