"""Benchmark: how long DVC takes to find that nothing needs to run (targets: repro <= 1.5 s, status <= 1 s).

Usage: python benchmarks/dvc_noop.py [--runs 5]  (in an up-to-date workspace, after dvc repro)
Prints the median and every run of `dvc status` and `dvc repro`, writes metrics/bench-dvc-noop.json.
A workspace that is not up to date is refused: the figures would then time work, not the check.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from simcaptcha.machine import available_cores
from simcaptcha.pipeline import METRICS
from simcaptcha.store import write_json

COMMANDS = {"status": ["dvc", "status", "--quiet"], "repro": ["dvc", "repro", "--quiet"]}
TARGETS = {"status": 1.0, "repro": 1.5}


def timed(command: list[str]) -> float:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} says the workspace is not up to date (run dvc repro first):\n"
                 f"{result.stdout}{result.stderr}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    timed(COMMANDS["status"])  # warm the file-system cache and DVC's hash state once
    figures: dict = {"cores": available_cores(), "load_average_before": round(os.getloadavg()[0], 2)}
    for name, command in COMMANDS.items():
        runs = [round(timed(command), 3) for _ in range(args.runs)]
        median = statistics.median(runs)
        figures[name] = {"median_seconds": median, "runs": runs, "target_seconds": TARGETS[name],
                         "meets_target": median <= TARGETS[name]}
        print(f"dvc {name:6s} median {median:.2f} s (target <= {TARGETS[name]} s)  runs {runs}")
    write_json(METRICS / "bench-dvc-noop.json", figures)


if __name__ == "__main__":
    main()
