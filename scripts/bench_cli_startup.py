"""How long the `tessera` command takes to start: wall and CPU time of whole processes.

Prints JSON: per command line, the median and min wall seconds and the median CPU seconds (user +
system of the child, which other processes' load inflates less than wall time) over --runs runs,
and the load average at start and end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = (("--help",), ("job", "list", "--help"), ("node", "--help"), ("version",), ("analyses",))


def _run(tessera: str, args: tuple[str, ...]) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([tessera, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--tessera", default=str(Path(sys.executable).with_name("tessera")))
    options = parser.parse_args()
    doc: dict[str, object] = {"load_start": os.getloadavg()[0], "runs": options.runs}
    for args in COMMANDS:
        _run(options.tessera, args)  # warm the file cache once
        walls, cpus = zip(*(_run(options.tessera, args) for _ in range(options.runs)), strict=True)
        doc["tessera " + " ".join(args)] = {
            "wall_s_median": round(statistics.median(walls), 3),
            "wall_s_min": round(min(walls), 3),
            "cpu_s_median": round(statistics.median(cpus), 3),
        }
    doc["load_end"] = os.getloadavg()[0]
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
