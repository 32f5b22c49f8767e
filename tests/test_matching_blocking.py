"""Candidate pairs stream: each pair that shares a blocking key is scored exactly once, and
`cdp match` does not hold them all (a base of 42,616 profiles held 3.2 million pairs, 490 MiB;
a million customers would have taken several gigabytes)."""

from __future__ import annotations

import random
import tracemalloc
import uuid

from cdp.matching import blocking
from cdp.matching.blocking import blocking_keys, iter_candidate_pairs
from cdp.matching.features import person
from cdp.matching.suggestions import find_matches

FIRST = ["Анна", "Иван", "Olga", "Petr", "Мария", "Sergey", "Елена", "Nikolai"]
LAST = ["Иванова", "Petrov", "Смирнов", "Kuznetsova", "Попов", "Sokolov"]
CITIES = ["Москва", "Kazan", "Тула", None]


def people(n: int, seed: int):  # type: ignore[no-untyped-def]
    rng = random.Random(seed)
    return [
        person(
            uuid.UUID(int=rng.getrandbits(128)),
            first_name=rng.choice(FIRST),
            last_name=rng.choice(LAST),
            birth_date=rng.choice(
                [None, f"19{rng.randint(60, 99)}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}"]
            ),
            postcode=rng.choice([None, f"10{rng.randint(0, 30):04d}"]),
            city=rng.choice(CITIES),
        )
        for _ in range(n)
    ]


def union_of_blocks(ps) -> set[tuple[int, int]]:  # type: ignore[no-untyped-def]
    """The definition: every pair some block pairs (all of a small block; in an oversized
    block, each member with the next WINDOW in sorted order)."""
    blocks: dict = {}
    for i, x in enumerate(ps):
        for key in blocking_keys(x):
            blocks.setdefault(key, []).append(i)
    out = set()
    for m in blocks.values():
        if len(m) > blocking.MAX_BLOCK:
            m = sorted(m, key=lambda k: (ps[k].last, ps[k].first, ps[k].birth))
            reach = blocking.WINDOW
        else:
            reach = len(m)
        for a in range(len(m)):
            for b in range(a + 1, min(len(m), a + 1 + reach)):
                out.add((min(m[a], m[b]), max(m[a], m[b])))
    return out


def test_every_pair_that_shares_a_block_comes_exactly_once(monkeypatch):
    for max_block, window, seed in [(300, 40, 1), (6, 2, 2), (10, 3, 3), (3, 1, 4)]:
        monkeypatch.setattr(blocking, "MAX_BLOCK", max_block)
        monkeypatch.setattr(blocking, "WINDOW", window)
        ps = people(250, seed)
        got = list(iter_candidate_pairs(ps))
        expected = union_of_blocks(ps)
        assert len(got) == len(set(got)), (max_block, window, "a pair came twice")
        assert set(got) == expected, (max_block, window, len(got), len(expected))
        assert len(expected) > 400  # the check had pairs to check


def test_matching_a_base_does_not_hold_its_candidate_pairs():
    ps = people(2500, 5)  # every pair of ~420 people of one surname is a candidate
    pairs = sum(1 for _ in iter_candidate_pairs(ps))
    assert pairs > 300_000
    tracemalloc.start()
    try:
        find_matches(ps, 0.99)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the pairs alone, held in a set, take over 30 MB; people and their blocks well under 5
    assert peak < 5 * 2**20, peak
