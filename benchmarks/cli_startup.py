"""Wall time of the commands that must answer before any heavy import: `gfnbench --help`, a bad `--task`,
`gfnbench tasks` and `gfnbench methods`, each the median of 5 fresh subprocesses (the start-up is the cost).

    .venv/bin/python benchmarks/cli_startup.py [--runs 5]

The figures depend on the host's load: report them with the machine and what else was running.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

GFNBENCH = [sys.executable, "-m", "gfnbench.cli"]
COMMANDS = {
    "gfnbench --help": ["--help"],
    "gfnbench run --task nosuch (bad --task)": ["run", "--task", "nosuch", "--method", "greedy"],
    "gfnbench tasks": ["tasks"],
    "gfnbench methods": ["methods"],
}


def wall_time(argv: list[str]) -> float:
    """Seconds from start to exit of one fresh `gfnbench` process (its output discarded)."""
    start = time.perf_counter()
    subprocess.run(GFNBENCH + argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   cwd=Path(__file__).resolve().parent.parent, check=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per command (median reported)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{os.cpu_count()} cores, 1-min load average {load:.2f} at start; median of {args.runs} runs each")
    for label, argv in COMMANDS.items():
        times = [wall_time(argv) for _ in range(args.runs)]
        print(f"{label:42s} {statistics.median(times):6.3f} s  (min {min(times):.3f}, max {max(times):.3f})")


if __name__ == "__main__":
    main()
