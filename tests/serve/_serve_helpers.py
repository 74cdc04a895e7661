"""Shared by the `mgsv serve` tests: constants, the TestClient factory, a real server in a subprocess."""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOKEN = "test-token-" + "x" * 20
PORT = 8765
BASE = f"http://127.0.0.1:{PORT}"
SERVER_START_TIMEOUT = 120.0  # seconds: importing torch and loading the tiny models on a busy CI machine


AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Library:
    music: Path
    index: Path
    clip: Path  # 6 s, with a voice-like sound
    silent_clip: Path  # 6 s, no audio stream


def make_client(engine, folders, **options):
    from fastapi.testclient import TestClient

    from mgsv_cli.serve.app import create_app

    app = create_app(engine, token=TOKEN, port=PORT, folders=folders, **options)
    return TestClient(app, base_url=BASE, raise_server_exceptions=False)



@dataclass
class LiveServer:
    process: subprocess.Popen
    home: Path
    url: str
    stderr_path: Path

    @property
    def state_file(self) -> Path:
        return self.home / "data" / "run" / "serve.json"

    def stop(self, sig=signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


def start_server(home: Path, index: Path, *extra: str) -> LiveServer:
    """``mgsv serve`` on 127.0.0.1 and a free port, in a subprocess; waits (bounded) for its URL line."""
    env = {**os.environ, "MGSV_HOME": str(home), "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("MGSV_DEBUG", None)
    stderr_path = home / "serve.stderr"
    home.mkdir(parents=True, exist_ok=True)
    err = open(stderr_path, "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "mgsv_cli", "serve", "--host", "127.0.0.1", "--port", "0", "--index", str(index),
         "--untrained", "--device", "cpu", *extra],
        stdout=subprocess.PIPE, stderr=err, env=env, cwd=REPO,
    )
    err.close()
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    try:
        first = lines.get(timeout=SERVER_START_TIMEOUT).decode().strip()
    except queue.Empty:
        process.kill()
        process.wait(10)
        raise AssertionError(f"mgsv serve printed no URL in {SERVER_START_TIMEOUT:.0f} s: "
                             f"{stderr_path.read_text(errors='replace')[-2000:]}")
    server = LiveServer(process, home, first, stderr_path)
    deadline = time.monotonic() + 10
    while not server.state_file.is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    return server


