"""Identity-resolution review: probabilistic match suggestions, merge reviews, merge snapshots.

Importing the package registers its erasure cleanup (consent.dsr.hooks).
"""

from cdp.matching import erasure as _erasure  # noqa: F401  (registers the erasure hook)
