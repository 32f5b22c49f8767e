"""Consent-change events for the tools that send messages: a transactional outbox.

- `enqueue`: writes outbox rows inside the caller's transaction (the consent change's own), so
  an event exists exactly when its change committed.
- `fanout`: turns committed events into one delivery per subscription that wanted the kind and
  existed when the event was recorded (done by the dispatcher, not in the consent transaction).
- `delivery` / `dispatcher`: signed HTTP delivery in order per customer, retries with backoff
  and jitter, dead letters; `stream`: the same events on NATS JetStream; `replay`: resend.
- `subscriptions`, `status`: what the HTTP API shows; `signing`: the Standard Webhooks scheme.

Kept free of heavy imports: consent.ledger imports `consent.outbox.enqueue`.
"""
