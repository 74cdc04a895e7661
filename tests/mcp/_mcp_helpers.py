"""Shared by the `mgsv mcp` tests: the server's command line, the SDK's clients over stdio and
HTTP, a real HTTP server in a subprocess, and a client process that can be killed."""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 180.0  # seconds: a safety net only (importing torch on a busy CI machine)
CALL_TIMEOUT = 600.0  # the first suggestion loads the models; indexing embeds music
TOKEN = "mcp-test-token-" + "y" * 20
CLIENT_SCRIPT = Path(__file__).with_name("_mcp_client.py")
KILL_TRACKS = 8  # songs of KILL_SECONDS: indexing them takes a while, so a client can be killed mid-way
KILL_SECONDS = 30.0


@dataclass
class Layout:
    """Where one server's files are: its MGSV_HOME, library, readable folder and output folder."""

    home: Path
    library: Path
    allowed: Path
    outputs: Path

    def server_args(self, *extra: str) -> list[str]:
        return ["-m", "mgsv_cli", "mcp", "--library", str(self.library), "--allow", str(self.allowed),
                "--output-dir", str(self.outputs), "--encoders", "tiny", "--untrained", "--device", "cpu", *extra]

    def env(self) -> dict[str, str]:
        passed = ("PATH", "HOME", "LANG", "TMPDIR", "PYTHONPATH", "MGSV_DEBUG")
        keep = {k: v for k, v in os.environ.items() if k in passed}
        return {**keep, "MGSV_HOME": str(self.home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "PYTHONUNBUFFERED": "1"}


def stdio_parameters(layout: Layout, *extra: str):
    from mcp import StdioServerParameters

    return StdioServerParameters(command=sys.executable, args=layout.server_args(*extra), env=layout.env(),
                                 cwd=str(REPO))


@asynccontextmanager
async def stdio_session(layout: Layout, *extra: str):
    """An SDK client connected to `mgsv mcp` over stdio (the server is its child process)."""
    from mcp import Client

    with open(layout.home / "server.stderr", "a") as errlog:
        from mcp.client.stdio import stdio_client

        async with Client(stdio_client(stdio_parameters(layout, *extra), errlog=errlog),
                          read_timeout_seconds=CALL_TIMEOUT) as client:
            yield client


@asynccontextmanager
async def http_session(url: str, token: str | None = TOKEN):
    """An SDK client connected to `mgsv mcp --http` (streamable HTTP) with the bearer token."""
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with create_mcp_http_client(headers=headers) as http:
        async with Client(streamable_http_client(url, http_client=http), read_timeout_seconds=CALL_TIMEOUT) as client:
            yield client


def run(async_fn, *args):
    import anyio

    return anyio.run(async_fn, *args)


def text_of(result) -> str:
    """The text of a tool result (a tool error's one-line message)."""
    return "\n".join(c.text for c in result.content if getattr(c, "type", "") == "text")


async def ok(client, tool: str, arguments: dict | None = None, **options) -> dict:
    """A tool call that must succeed: its structured result."""
    result = await client.call_tool(tool, arguments or {}, **options)
    assert not result.is_error, f"{tool}: {text_of(result)}"
    return result.structured_content


async def refused(client, tool: str, arguments: dict) -> str:
    """A tool call that must fail: its one-line message (never a traceback)."""
    result = await client.call_tool(tool, arguments)
    message = text_of(result)
    assert result.is_error, f"{tool} {arguments}: not refused: {message}"
    assert "\n" not in message and "Traceback" not in message and message, message
    return message


@dataclass
class LiveHttp:
    process: subprocess.Popen
    url: str
    header: str
    stderr_path: Path

    def stop(self, sig=signal.SIGTERM, timeout: float = 60.0) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


def start_http(layout: Layout, token: str = TOKEN) -> LiveHttp:
    """`mgsv mcp --http` on 127.0.0.1 and a free port; waits (bounded) for its two stdout lines."""
    layout.home.mkdir(parents=True, exist_ok=True)
    stderr_path = layout.home / "http.stderr"
    with open(stderr_path, "wb") as err:
        process = subprocess.Popen([sys.executable, *layout.server_args("--http", "--port", "0")],
                                   stdout=subprocess.PIPE, stderr=err, cwd=REPO,
                                   env={**layout.env(), "MGSV_MCP_TOKEN": token})
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    try:
        url = lines.get(timeout=START_TIMEOUT).decode().strip()
        header = lines.get(timeout=START_TIMEOUT).decode().strip()
    except queue.Empty:
        process.kill()
        process.wait(10)
        raise AssertionError(f"mgsv mcp --http printed no address: {stderr_path.read_text(errors='replace')[-2000:]}")
    return LiveHttp(process, url, header, stderr_path)


def start_client(layout: Layout, marker: Path, folder: Path, url: str | None = None) -> subprocess.Popen:
    """A client process (`_mcp_client.py`) that calls index_folder on ``folder`` and writes
    ``marker`` (JSON: its own pid, its server's pid over stdio) at the first progress notification."""
    spec = {"marker": str(marker), "folder": str(folder), "url": url, "token": TOKEN,
            "server": None if url else {"command": sys.executable, "args": layout.server_args(), "env": layout.env(),
                                        "cwd": str(REPO)}}
    return subprocess.Popen([sys.executable, str(CLIENT_SCRIPT), json.dumps(spec)], cwd=REPO, env=layout.env(),
                            stdout=subprocess.DEVNULL, stderr=open(layout.home / "client.stderr", "wb"))


def wait_for(condition, what: str, timeout: float = START_TIMEOUT, poll: float = 0.1):
    """Poll ``condition()`` until it is truthy (a readiness wait, bounded only as a safety net)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(poll)


def process_gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie waiting for its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
