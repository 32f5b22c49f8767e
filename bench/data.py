"""Synthetic customer files for benchmarks: realistic shapes, deterministic, any size."""

from __future__ import annotations

import csv
import random
from pathlib import Path

FIRST = [
    "Анна",
    "Мария",
    "Елена",
    "Иван",
    "Алексей",
    "Дмитрий",
    "James",
    "Emma",
    "Olivia",
    "Liam",
    "Sophia",
    "Noah",
]
LAST = ["Иванова", "Смирнов", "Кузнецова", "Попов", "Петрова", "Smith", "Brown", "Taylor"]
CITIES = ["Moscow", "Kazan", "Saint Petersburg", "Berlin", "Paris", "Los Angeles"]
HEADER = [
    "external_id",
    "email",
    "phone",
    "first_name",
    "last_name",
    "birth_date",
    "postal_address",
    "city",
    "country",
    "traits.tier",
    "consent.marketing.email",
    "consent.marketing.email.wording_id",
    "consent.marketing.email.occurred_at",
]


def customer_row(i: int, rng: random.Random) -> list[str]:
    consent = rng.random() < 0.4
    return [
        f"C{i}",
        f"user{i}@example.com",
        f"+7916{i % 10_000_000:07d}",
        rng.choice(FIRST),
        rng.choice(LAST),
        f"19{rng.randint(50, 99)}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}",
        f"ул. Ленина, {rng.randint(1, 200)}",
        rng.choice(CITIES),
        "RU",
        rng.choice(["bronze", "silver", "gold"]),
        "granted" if consent else "",
        "newsletter-v3" if consent else "",
        "2026-06-01T10:00:00Z" if consent else "",
    ]


def write_customers(path: Path, n: int, *, seed: int = 1, duplicate_share: float = 0.1) -> Path:
    """n rows; a share of them repeat an earlier customer's email from another system."""
    rng = random.Random(seed)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(HEADER)
        for i in range(n):
            row = customer_row(i, rng)
            if i > 10 and rng.random() < duplicate_share:
                j = rng.randrange(i)
                row[0] = f"D{i}"
                row[1] = f"user{j}@example.com"
                row[2] = ""
            w.writerow(row)
    return path
