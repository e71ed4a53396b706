"""DDG noise calibration cost at large survivor counts: CPU seconds and pmfs per cold
``ddg_sigma`` call (each node and the coordinator calibrate once per job). Prints JSON.

Usage: .venv/bin/python scripts/bench_ddg_calibration.py [--t 30,300,900] [--runs 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from tessera.core.dp import ddg


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--t", default="30,300,900", help="survivor counts, comma-separated")
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--rho", type=float, default=0.0123456)
    p.add_argument("--bound", type=int, default=2, help="L1 = L2 sensitivity")
    args = p.parse_args()
    rows = []
    for t in (int(x) for x in args.t.split(",")):
        cpu, pmfs, sigma = [], 0, 0.0
        for _ in range(args.runs):
            ddg._rho.cache_clear()  # the cold path, as a node meets it once per job
            ddg._sigma.cache_clear()
            start = time.process_time()
            sigma = ddg.ddg_sigma(rho=args.rho, survivors_t=t, l1=args.bound, l2=args.bound, dim=5)
            cpu.append(time.process_time() - start)
            pmfs = ddg._rho.cache_info().misses
        rows.append(
            {"t": t, "cpu_seconds_median": round(statistics.median(cpu), 3), "pmfs": pmfs, "sigma": sigma}
        )
    print(
        json.dumps(
            {"benchmark": "ddg_calibration", "rho": args.rho, "bound": args.bound, "rows": rows}, indent=1
        )
    )


if __name__ == "__main__":
    main()
