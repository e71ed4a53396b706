"""Synthetic partner data for the demo: realistic PII from Faker, written as a partner's raw CSV.

The columns follow the partner's policy (every classified field of the dataset), so the node
accepts the file; values are seeded and reproducible. Transactions name the customers that
``write_customers`` made with the same seed, several rows each, and one "whale" with hundreds: the
per-customer bounds of the analyses are visible in the demo's results.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from tessera.core.analyses.clv_predict import DERIVED_FIELDS
from tessera.core.errors import ConfigError
from tessera.core.policy import Policy

REGIONS = ("north", "south", "east", "west", "central")
CHANNELS = ("web", "app", "store", "phone")
PLANS = ("prepaid", "basic", "plus", "unlimited")
LOYALTY = ("none", "silver", "gold", "platinum")
SPEND_CATEGORIES = ("groceries", "travel", "fuel", "dining")
CATEGORIES = {
    "region": REGIONS,
    "channel": CHANNELS,
    "plan": PLANS,
    "loyalty_tier": LOYALTY,
    "category": SPEND_CATEGORIES,
}
WHALE_ROWS = 300  # the first customer of every partner makes this many transactions


def customer_id(seed: int, i: int) -> str:
    """The ``customer_id`` of customer ``i`` of the partner whose data has ``seed``."""
    return f"C{seed:03d}{i:07d}"


# Fields nodes derive at home from released models (CLV predictions, segment and cluster labels).
HOME_DERIVED = frozenset({*DERIVED_FIELDS, "rfm_segment", "cluster", "churn_risk"})


def write_customers(policy: Policy, dataset: str, path: Path, *, rows: int, seed: int) -> None:
    """Write ``rows`` synthetic customers with exactly the columns ``policy`` classifies, except the
    derived fields nodes compute at home (``tessera node clv --store``), which no source holds."""
    try:
        from faker import Faker
    except ImportError:
        raise ConfigError("the demo needs Faker: pip install 'tessera[demo]'") from None
    fake = Faker("en_GB")
    fake.seed_instance(seed)
    rng = random.Random(seed)
    # Labels a node derives at home (`tessera node segments --store`) are never ingested.
    fields = [f for f in policy.schema(dataset).fields if f.name not in HOME_DERIVED]
    today = date(2026, 11, 1)

    generators: dict[str, Callable[[int], object]] = {
        "customer_id": lambda i: customer_id(seed, i),
        "name": lambda i: fake.name(),
        # Every 5th customer is a member of the consortium's shared panel: the same e-mail address
        # at every partner (written with other capitals at some), so the overlap job has
        # something to count. Everyone else is the partner's own.
        "email": lambda i: (
            (f"Member{i}@Panel.example" if seed % 2 else f"member{i}@panel.example")
            if i % 5 == 0
            else fake.unique.email()
        ),
        "phone": lambda i: _phone(rng, i),
        # Unique once normalised (Faker's "ZZ 083016 T" and "ZZ 08 30 16 T" are one number).
        "national_id": lambda i: f"ZZ {(seed * 100_003 + i) % 10**6:06d} {'ABCD'[i % 4]}",
        "signup_date": lambda i: (today - timedelta(days=rng.randint(30, 3650))).isoformat(),
        "tenure_months": lambda i: rng.randint(1, 120),
        "monthly_spend": lambda i: round(rng.lognormvariate(3.5, 0.6), 2),
        "churned": lambda i: rng.random() < 0.18,
    }

    def by_type(name: str, kind: str) -> Callable[[int], object]:
        if name in generators:
            return generators[name]
        if kind == "category":
            choices = CATEGORIES.get(name, ("a", "b", "c"))
            return lambda i: rng.choice(choices)
        if kind == "int":
            return lambda i: rng.randint(0, 100)
        if kind == "float":
            return lambda i: round(rng.uniform(0, 100), 2)
        if kind == "bool":
            return lambda i: rng.random() < 0.5
        if kind == "date":
            return lambda i: (today - timedelta(days=rng.randint(0, 3650))).isoformat()
        return lambda i: fake.word()

    columns = [(f.name, by_type(f.name, f.type)) for f in fields if f.name not in HOME_DERIVED]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([name for name, _ in columns])
        for i in range(rows):
            writer.writerow([gen(i) for _, gen in columns])


def write_transactions(policy: Policy, path: Path, *, customers: int, seed: int) -> int:
    """Write transactions of the ``customers`` customers that ``write_customers`` made with ``seed``:
    0 to 12 each (about 4), the first customer ``WHALE_ROWS``; returns the rows written.

    Every row has its own time, so the vault's idempotent ingestion keeps all of them.
    """
    rng = random.Random(seed * 7919 + 1)
    start = datetime(2026, 1, 1, tzinfo=UTC)

    def rows() -> Iterator[dict[str, object]]:
        for i in range(customers):
            count = WHALE_ROWS if i == 0 else min(int(rng.expovariate(0.25)), 12)
            favourite = rng.choice(CHANNELS)
            for j in range(count):
                yield {
                    "customer_id": customer_id(seed, i),
                    "time": (start + timedelta(days=j % 300, seconds=i * 60 + j)).isoformat(),
                    "amount": round(rng.lognormvariate(3.0, 0.8), 2),
                    "channel": favourite if rng.random() < 0.7 else rng.choice(CHANNELS),
                    "category": rng.choice(SPEND_CATEGORIES),
                }

    return _write_rows(policy, "transactions", path, rows())


def _write_rows(policy: Policy, dataset: str, path: Path, rows: Iterable[dict[str, object]]) -> int:
    """``rows`` as a CSV with the dataset's fields in the policy's order; returns how many."""
    fields = [f.name for f in policy.schema(dataset).fields]
    path.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(fields)
        for values in rows:
            writer.writerow([values.get(name, "") for name in fields])
            written += 1
    return written


# The demo's web/app funnel: every session starts with a visit; each later step follows the one
# before with these chances (so about 60%, 27% and 14% of sessions reach view, cart and purchase).
FUNNEL_STEPS = ("visit", "view", "cart", "purchase")
_STEP_CHANCE = (0.6, 0.45, 0.5)
WHALE_SESSIONS = 75  # the first customer's sessions: 300 events if each ran the whole funnel


def write_events(policy: Policy, path: Path, *, customers: int, seed: int) -> int:
    """Write app and web events of the ``customers`` customers that ``write_customers`` made with
    ``seed``: 0 to 6 sessions each over 2026 (the first customer ``WHALE_SESSIONS``), each a run
    of ``FUNNEL_STEPS`` minutes apart that stops at random, plus a stray ``search`` event now and
    then (not a step, so funnels skip it); returns the rows written.

    Every row has its own time, so the vault's idempotent ingestion keeps all of them.
    """
    rng = random.Random(seed * 104_729 + 3)
    start = datetime(2026, 1, 1, tzinfo=UTC)

    def rows() -> Iterator[dict[str, object]]:
        for i in range(customers):
            sessions = WHALE_SESSIONS if i == 0 else min(int(rng.expovariate(0.7)), 6)
            for s in range(sessions):
                # Sessions at least a day apart; the funnel window (a week) may span several.
                at = start + timedelta(days=s * 4 + rng.randint(0, 3), seconds=i * 97 + rng.randint(0, 3600))
                kinds = [FUNNEL_STEPS[0]]
                for step, chance in zip(FUNNEL_STEPS[1:], _STEP_CHANCE, strict=True):
                    if rng.random() >= chance:
                        break
                    kinds.append(step)
                if rng.random() < 0.2:
                    kinds.insert(1, "search")
                for j, kind in enumerate(kinds):
                    yield {
                        "customer_id": customer_id(seed, i),
                        "time": (at + timedelta(minutes=3 * j, seconds=j)).isoformat(),
                        "event_type": kind,
                    }

    return _write_rows(policy, "events", path, rows())


def _phone(rng: random.Random, i: int) -> str:
    """A UK mobile number, unique per row (Faker's en_GB pool holds only 1,000 numbers, which One ID
    would rightly merge), written the way exports mix formats: national or international."""
    digits = f"{rng.randrange(10**5):05d}{i:04d}"  # the row number keeps every number distinct
    return f"07{digits[:3]} {digits[3:]}" if i % 2 else f"+44 7{digits[:3]} {digits[3:]}"


def cdnow_purchases(repository: Path, name: str = "CDNOW_master.txt") -> list[tuple[int, str, str]] | None:
    """CDNOW purchases (Fader, Hardie & Lee 2005) as (customer, ISO date, dollars) rows, from
    ``$TESSERA_CDNOW`` or ``../shared/data/cdnow/<name>`` beside the checkout; ``None`` when
    neither exists (the demo then skips its lifetime-value job, saying why). Reads the master
    file (customer, date, CDs, dollars) and the sample (master id, sample id, date, CDs, dollars)."""
    import os

    env = os.environ.get("TESSERA_CDNOW")
    path = Path(env) if env else repository.parent / "shared" / "data" / "cdnow" / name
    if not path.is_file():
        return None
    rows = []
    for line in path.read_text(encoding="ascii").splitlines():
        cols = line.split()
        if len(cols) not in (4, 5) or not cols[0].isdigit():
            continue
        when, amount = (cols[1], cols[3]) if len(cols) == 4 else (cols[2], cols[4])
        rows.append((int(cols[0]), f"{when[:4]}-{when[4:6]}-{when[6:]}", amount))
    return rows


def append_cdnow(
    policy: Policy, path: Path, rows: list[tuple[int, str, str]], *, first: int, seed: int
) -> int:
    """Append CDNOW ``rows`` to a transactions CSV as customers ``first``, ``first + 1``… of the
    partner with ``seed`` (in order of their CDNOW ids); returns how many customers they are."""
    fields = [f.name for f in policy.schema("transactions").fields]
    ids = sorted({cid for cid, _, _ in rows})
    index = {cid: first + k for k, cid in enumerate(ids)}
    with path.open("a", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        for n, (cid, when, amount) in enumerate(rows):
            # A distinct second per row keeps same-day purchases apart for idempotent ingestion.
            values = {
                "customer_id": customer_id(seed, index[cid]),
                "time": f"{when}T12:{n // 60 % 60:02d}:{n % 60:02d}+00:00",
                "amount": amount,
            }
            writer.writerow([values.get(name, "") for name in fields])
    return len(ids)
