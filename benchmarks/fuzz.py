"""Long fuzzing run: the properties of tests/test_fuzz.py with many more (random) examples.

CI runs 150 deterministic examples per property; this runs N fresh random ones each and prints
a table of cases and findings for the README's reliability section. Run:

    .venv/bin/python benchmarks/fuzz.py --examples 3000
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=3000, help="examples per property")
    args = parser.parse_args()
    env = dict(os.environ, VITGENDER_FUZZ_PROFILE="long", VITGENDER_FUZZ_EXAMPLES=str(args.examples))
    began = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--hypothesis-show-statistics",
            str(REPO / "tests" / "test_fuzz.py"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    )
    seconds = time.perf_counter() - began
    out = proc.stdout
    print("| property | cases run | failing cases |\n|---|---|---|")
    total = findings = 0
    stats = out.split("Hypothesis Statistics", 1)[-1].split("short test summary info", 1)[0]
    for block in stats.split("tests/test_fuzz.py::")[1:]:
        name = block.split(":", 1)[0]
        passing = sum(int(n) for n in re.findall(r"(\d+) passing", block))
        failing = sum(int(n) for n in re.findall(r"(\d+) failing", block))
        total, findings = total + passing + failing, findings + failing
        print(f"| {name} | {passing + failing} | {failing} |")
    summary = out.strip().splitlines()[-1] if out.strip() else proc.stderr[-500:]
    print(f"\n{total} generated cases, {findings} failing, in {seconds:.0f} s; pytest: {summary}")
    if proc.returncode != 0:
        print(out[-6000:])
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
