"""The catalog-scale benches write Lance stores in ``index/lance_store``'s layout themselves (1M
rows are too many to write through ``add_tracks``): run each at a small size so that a change of
that layout (a new column) breaks a test, not the next person's benchmark."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lance", reason="the Lance store needs pylance (the scale extra)")

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _run(*args: str) -> str:
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=900, cwd=BENCH.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_bench_scale_builds_and_queries_a_small_store(tmp_path):
    out = _run(str(BENCH / "bench_scale.py"), "--sections", "million", "--tracks", "400", "--chunk", "200",
               "--repeats", "1", "--cold-repeats", "1", "--folder", str(tmp_path))
    result = json.loads(out.strip().splitlines()[-1])["million"]
    assert result["tracks"] == 400 and result["by_rerank"]["1000"]["queries"] == 1


def test_bench_lance_store_builds_and_reads_a_small_store(tmp_path):
    out = _run(str(BENCH / "bench_lance_store.py"), "--tracks", "2000", "--folder", str(tmp_path))  # its top 1,000
    assert "derived_for 1000 random" in out and "tokens_for" in out
