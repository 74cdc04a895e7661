"""bench/gpu_check.py must keep running: its smoke mode (tiny sizes, CPU) prints one JSON line with every key.

The full check is for a CUDA machine (see bench/README.md); no timing is asserted here.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_run_prints_one_json_line_with_every_key(tmp_path):
    keys = load_script().KEYS
    env = {**os.environ, "MGSV_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--device", "cpu", "--work", str(tmp_path / "work")],
                          capture_output=True, text=True, env=env, timeout=900, cwd=REPO)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    figures = json.loads(lines[0])
    assert proc.returncode == 0 and figures["ok"], (figures.get("errors"), proc.stderr[-3000:])
    assert set(keys) <= set(figures), set(keys) - set(figures)
    assert figures["errors"] == {} and figures["smoke"] is True and figures["device"] == "cpu"
    measured = ("data_write_s", "data_pack_s", "train_epoch_s", "train_step_s_median", "eval_test_s",
                "ast_windows_per_s", "ast_model_windows_per_s", "ast_cpu_prep_windows_per_s", "clip_frames_per_s",
                "suggest_warm_s", "suggest_decode_s")
    assert all(figures[key] is not None for key in measured), {k: figures[k] for k in measured}
    assert set(figures["targets"]) == set(figures["meets"])
    assert figures["data_videos"] == {"train": 96, "val": 24, "test": 24}
    assert figures["eval_test_n"] == 24 and figures["ast_tracks"] == 3
