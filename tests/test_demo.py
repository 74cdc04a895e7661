"""`make demo` end to end (at a small size), and the follow-up commands it prints run exactly as printed."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys

from mgsv_cli import demo
from mgsv_cli.paths import cache_dir

SMALL = ["--tracks", "4", "--clips", "2", "--epochs", "2"]  # the loop, not the quality (test_media_loop has that)


def test_demo_runs_and_its_next_commands_run_as_printed(tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)  # like `make demo` from the repository root: paths are printed relative
    assert demo.main(["demo_out", *SMALL]) == 0
    printed = capfd.readouterr().out
    assert (tmp_path / "demo_out" / "clip.with-music.mp4").is_file()
    assert "What is synthetic here" in printed and "planted for this clip: track-" in printed
    assert "suggest ranked it #" in printed or "did not rank it" in printed
    checkpoint = cache_dir() / "demo" / demo.cache_key(4, 2, 2) / "run"
    assert (checkpoint / "model.safetensors").is_file()
    commands = [line.strip() for line in printed.splitlines() if line.strip().startswith(".venv/bin/mgsv ")]
    assert [c.split()[1] for c in commands] == ["index", "suggest", "render"]
    assert commands == demo.next_commands(tmp_path / "demo_out", checkpoint)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # the user's own MGSV_HOME (the test's isolated one)
    for command in commands:
        args = shlex.split(command)[1:]
        done = subprocess.run([sys.executable, "-m", "mgsv_cli", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (command, done.stderr[-1500:])
    assert (tmp_path / "demo_out" / "clip.mine.mp4").is_file()
    # A second demo finds the trained model in the cache: no synthesis, no training.
    assert demo.main(["demo_out", *SMALL]) == 0
    again = capfd.readouterr().out
    assert "using the planted dataset and model trained by an earlier demo" in again
    assert "$ mgsv train" not in again
