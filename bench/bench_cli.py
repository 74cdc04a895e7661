"""`mgsv --help` start-up time (target < 0.3 s) and which heavy modules the CLI imports at start."""
from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "numpy", "open_clip", "transformers", "librosa", "opentimelineio", "PIL")


def main() -> None:
    command = [sys.executable, "-m", "mgsv_cli", "--help"]
    times = []
    for _ in range(7):
        start = time.perf_counter()
        subprocess.run(command, cwd=ROOT, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    print(f"mgsv --help: median {statistics.median(times):.3f} s, min {min(times):.3f} s over 7 runs "
          f"(first {times[0]:.3f} s; target < 0.3 s)")
    probe = "import sys, mgsv_cli.cli; print(','.join(m for m in %r if m in sys.modules))" % (HEAVY,)
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    print(f"heavy modules imported by the CLI at start: {loaded.stdout.strip() or 'none'}")


if __name__ == "__main__":
    main()
