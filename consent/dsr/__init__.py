"""Data subject requests: erasure (state machine, deadlines, executor, worker) and access.

- `deadlines`: when a request is due, from the jurisdiction's policy (pure functions);
- `states`: the request state machine (pure);
- `requests`: receipt (joining an open duplicate), reading, listing, extension, rejection;
- `erasure`: the crash-safe executor; `worker`: the loop that finishes open requests;
- `access`: the access request export; `hooks`: cleanups other modules add to an erasure.
"""
