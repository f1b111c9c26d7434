"""What every CLI command pays before it does anything: the time to start Python and import `starter`.

Runs each of these in a fresh interpreter, several times, and prints the median wall time and CPU of each, and the
CLI's as a multiple of a bare `python -c pass` measured in the same run (the machine may be busy: the ratio is the
figure to compare, the target being 0.4 s for `import starter` on a quiet 2-core machine):

    .venv/bin/python -m bench.startup --runs 15
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = {
    "python -c pass (baseline)": [sys.executable, "-c", "pass"],
    "import starter": [sys.executable, "-c", "import starter"],
    "starter.py --help": [sys.executable, "starter.py", "--help"],
    "import client (send, status, cancel)": [sys.executable, "-c", "import client"],
}


def measure(argv: list[str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user and system) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(argv, cwd=ROOT, check=True, capture_output=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    for argv in PROGRAMS.values():
        measure(argv)  # compiled and cached once, as after an install
    medians = {}
    for name, argv in PROGRAMS.items():
        runs = [measure(argv) for _ in range(args.runs)]
        medians[name] = (statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs))
    baseline = medians["python -c pass (baseline)"][0]
    print(f"{'':40} {'wall s':>8} {'cpu s':>8} {'x baseline':>11}")
    for name, (wall, cpu) in medians.items():
        print(f"{name:40} {wall:8.3f} {cpu:8.3f} {wall / baseline:11.1f}")


if __name__ == "__main__":
    main()
