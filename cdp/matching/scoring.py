"""Scoring a candidate pair: per-field similarities, and a match probability from them.

Similarities (0..1, None where either side lacks the field), with rapidfuzz:
- first and last name: Jaro-Winkler on transliterated names; where first and last are clearly
  swapped between the two profiles, the swapped comparison counts;
- birth date: 1 equal, 0.8 one digit mistyped or transposed or day and month swapped,
  0.4 two edits, else 0;
- postcode: normalised Damerau-Levenshtein similarity; city: Jaro-Winkler;
- postal address: token-set ratio (word order and extra words do not count against it).

The score is a logistic model over the name, birth date and location evidence (postcode, city
and address are correlated, so they count once, as their weighted mean; a city or postcode
without an address is no location evidence); a missing field counts neither for nor against.
The weights were fitted on FEBRL2 and the threshold chosen there (`python -m bench.febrl
--fit`); FEBRL1, 3 and 4 are reported with the same numbers.

Household guard: two profiles whose first names and birth dates both disagree are different
people at one address (spouses, parent and child), whatever the rest says: never suggested.
Where neither a first name nor a birth date agrees (one is missing, the other disagrees or is
missing too), what agrees is what people of one household share (surname, address), so the
score is at most HOUSEHOLD_CEILING: listed for review, never as a confident match. A strict
guard here would cost FEBRL recall: its generator replaces a first name outright in some
duplicates (`braedon block` / `charlie block`), which is what spouses look like.

Twins: a birth date is a household field too for twins, who share it with the surname and the
address. Where both first names are given and disagree, the birth date that agrees does not
make the pair a confident match either: at most HOUSEHOLD_CEILING, flagged `first_names_differ`
(Александр and Ирина Ивановы, born the same day, of one flat, scored 1.0). A diminutive that
looks nothing like the full name (Женя / Евгений) is capped the same way: names are compared
by spelling, with no table of diminutives (Саша / Александр agree by spelling, 0.64). At the
default minimum score such pairs are still stored, so FEBRL's figures do not change.
"""

from __future__ import annotations

import math

from rapidfuzz import fuzz
from rapidfuzz.distance import DamerauLevenshtein, JaroWinkler

from cdp.matching.features import Person

FIELDS = ("first_name", "last_name", "birth_date", "postcode", "city", "postal_address")
LOCATION_WEIGHTS = {"postal_address": 0.5, "postcode": 0.25, "city": 0.25}

# Fitted on FEBRL2 (bench/febrl.py --fit): weight on the similarity, offset when present.
INTERCEPT = -7.46
WEIGHTS = {
    "first": (7.59, -5.98),
    "last": (8.49, -5.90),
    "birth": (10.71, -4.82),
    "location": (20.27, -7.39),
}
THRESHOLD = 0.35  # the default --min-score: the F1-best on FEBRL2
HOUSEHOLD_CEILING = 0.5  # the most a pair scores when only household fields agree


def _names(a: str, b: str) -> float | None:
    if not a or not b:
        return None
    return JaroWinkler.normalized_similarity(a.replace(" ", ""), b.replace(" ", ""))


def birth_similarity(a: str, b: str) -> float | None:
    if not a or not b:
        return None
    if a == b:
        return 1.0
    distance = DamerauLevenshtein.distance(a, b)
    if distance == 1:
        return 0.8
    if len(a) == len(b) == 8 and a[:4] == b[:4] and a[4:6] == b[6:8] and a[6:8] == b[4:6]:
        return 0.8
    if distance == 2:
        return 0.4
    return 0.0


def similarities(x: Person, y: Person) -> tuple[dict[str, float | None], bool]:
    """Per-field similarities, and whether first and last names were swapped."""
    straight = (_names(x.first, y.first), _names(x.last, y.last))
    crossed = (_names(x.first, y.last), _names(x.last, y.first))
    total = lambda pair: sum(v for v in pair if v is not None)  # noqa: E731
    swapped = total(crossed) > total(straight) + 0.2
    first, last = crossed if swapped else straight
    return {
        "first_name": first,
        "last_name": last,
        "birth_date": birth_similarity(x.birth, y.birth),
        "postcode": (
            DamerauLevenshtein.normalized_similarity(x.postcode, y.postcode)
            if x.postcode and y.postcode
            else None
        ),
        "city": JaroWinkler.normalized_similarity(x.city, y.city) if x.city and y.city else None,
        "postal_address": (
            fuzz.token_set_ratio(x.address, y.address) / 100 if x.address and y.address else None
        ),
    }, swapped


def evidence(sims: dict[str, float | None]) -> dict[str, float | None]:
    """The model's four inputs: first name, last name, birth date, location. A city or a
    postcode without a postal address is no location evidence: the weight was fitted where an
    address came with them, and both name an area where many customers live (a shop's
    customers mostly share a few cities; 101000 is a district of Moscow), so a first name and a
    city in common, or a common name and a postcode, made two strangers a near-certain match."""
    if sims["postal_address"] is None:
        return {
            "first": sims["first_name"],
            "last": sims["last_name"],
            "birth": sims["birth_date"],
            "location": None,
        }
    present = [(w, sims[f]) for f, w in LOCATION_WEIGHTS.items() if sims[f] is not None]
    weight = sum(w for w, _ in present)
    location = sum(w * v for w, v in present) / weight  # type: ignore[operator]
    return {
        "first": sims["first_name"],
        "last": sims["last_name"],
        "birth": sims["birth_date"],
        "location": location,
    }


def score(sims: dict[str, float | None]) -> float:
    logit = INTERCEPT
    for name, value in evidence(sims).items():
        if value is not None:
            weight, offset = WEIGHTS[name]
            logit += weight * value + offset
    probability = 1.0 / (1.0 + math.exp(-logit))
    return probability if confident(sims) else min(probability, HOUSEHOLD_CEILING)


def _first_agrees(sims: dict[str, float | None]) -> bool:
    return sims["first_name"] is not None and sims["first_name"] >= 0.6


def _birth_agrees(sims: dict[str, float | None]) -> bool:
    return sims["birth_date"] is not None and sims["birth_date"] >= 0.5


def personal(sims: dict[str, float | None]) -> bool:
    """Whether a field that tells people of one household apart agrees: first name, birth date."""
    return _first_agrees(sims) or _birth_agrees(sims)


def first_names_differ(sims: dict[str, float | None]) -> bool:
    """Both first names are given and disagree."""
    return sims["first_name"] is not None and not _first_agrees(sims)


def confident(sims: dict[str, float | None]) -> bool:
    """Whether the pair may score above HOUSEHOLD_CEILING: its first names agree, or one is
    missing and the birth dates agree (a birth date alone is what twins share)."""
    return personal(sims) and not first_names_differ(sims)


def household(sims: dict[str, float | None]) -> bool:
    """Both the first names and the birth dates are given and disagree."""
    first, birth = sims["first_name"], sims["birth_date"]
    return first is not None and birth is not None and not personal(sims)


def reasons(sims: dict[str, float | None], swapped: bool) -> dict[str, float | bool | None]:
    out: dict[str, float | bool | None] = {
        f: None if v is None else round(v, 3) for f, v in sims.items()
    }
    if swapped:
        out["names_swapped"] = True
    if not personal(sims):
        out["household_fields_only"] = True  # the score is at most HOUSEHOLD_CEILING
    elif first_names_differ(sims):
        out["first_names_differ"] = True  # twins look like this: at most HOUSEHOLD_CEILING
    return out
