"""Ingestion throughput of the node's vault (JSON on stdout; not run by pytest).

    .venv/bin/python scripts/bench_ingest.py --customers 100000 --transactions 500000 [--db URL] [--repeat 3]

Synthetic customers carry three core-sensitive fields (customer id, email, phone: each encrypted
and blind-indexed), a category, a date, a float and a bool; transactions carry a customer id, a
time, an amount and a category. Reports medians over ``--repeat`` fresh vaults: end-to-end rows per
second, the peak resident memory, the wall time of the validation pass (parse, standardise and
blind-index, in the worker processes) and of the write pass, and the CPU each stage costs (parse,
normalise, encrypt, blind index measured as separate single-process passes over the same data).
Rows that fit the ingestor's ``keep_rows`` budget are parsed once; ``--keep-rows 0`` measures the
old parse-twice behaviour.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import secrets
import statistics
import sys
import tempfile
import time
from datetime import UTC
from pathlib import Path

import sqlalchemy as sa

from tessera.client.vault.crypto import FieldContext
from tessera.client.vault.ingest import Ingestor
from tessera.client.vault.mapping import mapping_for_columns
from tessera.client.vault.normalise import parse_value
from tessera.client.vault.sources import CsvSource
from tessera.client.vault.state import init_node_state
from tessera.core.policy import parse_policy

POLICY = """
version: 1
policy_id: bench-v1
partner: bank
datasets:
  customers:
    fields:
      customer_id:   {tier: core_sensitive, type: string}
      email:         {tier: core_sensitive, type: string}
      phone:         {tier: core_sensitive, type: string}
      region:        {tier: non_sensitive, type: category}
      signup_date:   {tier: general_sensitive, type: date}
      monthly_spend: {tier: general_sensitive, type: float}
      churned:       {tier: general_sensitive, type: bool}
  transactions:
    fields:
      customer_id: {tier: core_sensitive, type: string}
      time:        {tier: general_sensitive, type: date}
      amount:      {tier: general_sensitive, type: float}
      category:    {tier: non_sensitive, type: category}
allowed_analyses: [count]
allowed_purposes: [research]
privacy: {epsilon_per_job: 0.5, epsilon_per_period: 4.0, period_days: 90, delta: 1.0e-7}
min_cohort_size: 25
min_participants: 3
allowed_partners: [telco, retailer]
retention_days: 365
"""


STAGES = ("parse_csv", "normalise", "encrypt", "blind_index")


def write_data(folder: Path, customers: int, transactions: int, seed: int) -> tuple[Path, Path]:
    rng = random.Random(seed)
    cpath, tpath = folder / "customers.csv", folder / "transactions.csv"
    with cpath.open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(["customer_id", "email", "phone", "region", "signup_date", "monthly_spend", "churned"])
        for i in range(customers):
            out.writerow(
                [
                    f"C{i:08d}",
                    f"user{i}.{rng.randrange(10**6)}@example.com",
                    f"07{700000000 + i:09d}"[:11],
                    rng.choice("nsewc"),
                    f"20{rng.randint(10, 25)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                    f"{rng.lognormvariate(3.5, 0.6):.2f}",
                    rng.random() < 0.2,
                ]
            )
    with tpath.open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(["customer_id", "time", "amount", "category"])
        for j in range(transactions):
            out.writerow(
                [
                    f"C{rng.randrange(customers):08d}",
                    f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T"
                    f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00+00:00",
                    f"{rng.uniform(1, 500):.2f}",
                    rng.choice(("food", "travel", "fuel", "fees")) + str(j % 7),
                ]
            )
    return cpath, tpath


def components(path: Path, policy, keys) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Seconds for each stage as its own pass over the customers file (single process)."""
    src = CsvSource(path)
    mapping = mapping_for_columns(policy, "customers", src.columns, default_region="GB")
    t0 = time.perf_counter()
    rows = [v for _, v in src.rows()]
    t1 = time.perf_counter()
    parsed = [
        [parse_value(c, v[i], zone=UTC, default_region="GB") for i, c in enumerate(mapping.columns)]
        for v in rows
        if v is not None
    ]
    t2 = time.perf_counter()
    cipher, identity = keys.cipher(), None
    for n, rec in enumerate(parsed):
        for f in range(3):
            cipher.encrypt_text(str(rec[f]), context=FieldContext("vault_pii", "token", f"{n}:{f}"))
    t3 = time.perf_counter()
    from tessera.client.vault.identity import IdentityIndex

    identity = IdentityIndex(keys.blind_index_key())
    for rec in parsed:
        identity.index("customer_id", str(rec[0]))
        identity.index("email", str(rec[1]))
        identity.index("phone", str(rec[2]))
    t4 = time.perf_counter()
    return {"parse_csv": t1 - t0, "normalise": t2 - t1, "encrypt": t3 - t2, "blind_index": t4 - t3}


def one_run(  # noqa: PLR0917 - a script's helper
    cpath: Path, tpath: Path, db: str | None, batch: int, workers: int, keep: int, stages: bool
) -> dict[str, float]:
    policy = parse_policy(POLICY, source="bench")
    with tempfile.TemporaryDirectory() as tmp:
        schema = None
        url = db
        if db is not None and db.startswith("postgresql"):
            schema = f"bench_{secrets.token_hex(4)}"
            admin = sa.create_engine(db)
            with admin.begin() as conn:
                conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
            admin.dispose()
            url = f"{db}{'&' if '?' in db else '?'}options=-csearch_path%3D{schema}"
        os.environ.pop("TESSERA_VAULT_KEK", None)
        state = init_node_state(Path(tmp) / "state", policy, db_url=url)
        try:
            marks: list[float] = []
            ingestor = Ingestor(
                state.handle(default_region="GB"),
                batch_size=batch,
                workers=workers,
                keep_rows=keep,
                on_start=lambda _rows: marks.append(time.perf_counter()),
            )
            src = CsvSource(cpath)
            t0 = time.perf_counter()
            ingestor.ingest(src, mapping_for_columns(policy, "customers", src.columns, default_region="GB"))
            t1 = time.perf_counter()
            if tpath.stat().st_size > 100:  # a header alone is refused by ingestion
                src = CsvSource(tpath)
                ingestor.ingest(src, mapping_for_columns(policy, "transactions", src.columns))
            t2 = time.perf_counter()
            parts = components(cpath, policy, state.keys) if stages else dict.fromkeys(STAGES, 0.0)
        finally:
            state.close()
            if schema is not None and db is not None:
                admin = sa.create_engine(db)
                with admin.begin() as conn:
                    conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
                admin.dispose()
    split = {"customers_validate_s": marks[0] - t0, "customers_write_s": t1 - marks[0]}
    if len(marks) > 1:
        split |= {"transactions_validate_s": marks[1] - t1, "transactions_write_s": t2 - marks[1]}
    return {"customers_s": t1 - t0, "transactions_s": t2 - t1, **split, **parts}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--transactions", type=int, default=500_000)
    parser.add_argument("--db", default=None, help="SQLAlchemy URL (default: a SQLite file in a temp dir)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--keep-rows", type=int, default=250_000)
    parser.add_argument("--no-stages", action="store_true", help="skip the per-stage CPU passes")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        cpath, tpath = write_data(Path(tmp), args.customers, args.transactions, args.seed)
        runs = [
            one_run(cpath, tpath, args.db, args.batch_size, args.workers, args.keep_rows, not args.no_stages)
            for _ in range(args.repeat)
        ]
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    result = {
        "db": "sqlite" if args.db is None else args.db.split(":", 1)[0],
        "customers": args.customers,
        "transactions": args.transactions,
        "repeat": args.repeat,
        "cpu_count": os.cpu_count(),
        "workers": args.workers,
        "customers_per_s": round(args.customers / med["customers_s"], 1),
        "transactions_per_s": round(args.transactions / med["transactions_s"], 1)
        if args.transactions
        else None,
        "median_seconds": {k: round(v, 3) for k, v in med.items()},
        # Single-process CPU seconds per stage; parse, normalise and index run in the workers
        # (once per row within keep_rows), encryption in the writing process.
        "customers_stage_cpu_s": {
            "parse_csv": round(med["parse_csv"], 3),
            "normalise": round(med["normalise"], 3),
            "encrypt": round(med["encrypt"], 3),
            "blind_index": round(med["blind_index"], 3),
        },
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
