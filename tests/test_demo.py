"""`make demo` end to end, and the follow-up commands it prints run exactly as printed."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys

from mgsv_cli import demo


def test_demo_runs_and_its_next_commands_run_as_printed(tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)  # like `make demo` from the repository root: paths are printed relative
    assert demo.main(["demo_out"]) == 0
    printed = capfd.readouterr().out
    assert (tmp_path / "demo_out" / "clip.with-music.mp4").is_file()
    commands = [line.strip() for line in printed.splitlines() if line.strip().startswith(".venv/bin/mgsv ")]
    assert [c.split()[1] for c in commands] == ["index", "suggest", "render"]
    assert commands == demo.next_commands(tmp_path / "demo_out")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # the user's own MGSV_HOME (the test's isolated one)
    for command in commands:
        args = shlex.split(command)[1:]
        done = subprocess.run([sys.executable, "-m", "mgsv_cli", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (command, done.stderr[-1500:])
    assert (tmp_path / "demo_out" / "clip.mine.mp4").is_file()
