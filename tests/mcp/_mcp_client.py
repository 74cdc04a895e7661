"""A client process for the tests that kill one mid-call: connects to `mgsv mcp` (over stdio it
starts the server; over HTTP it is given the URL), calls index_folder and, at the first progress
notification, writes the marker file (its pid, and its server's over stdio); then waits to be killed.

Usage: python _mcp_client.py JSON (marker, folder, url, token, server).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import anyio


def children() -> list[int]:
    """This process's child pids (Linux): over stdio, the server the SDK started."""
    found = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        found += [int(p) for p in (task / "children").read_text().split()]
    return found


async def main(spec: dict) -> None:
    from mcp import Client, StdioServerParameters
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    marker = Path(spec["marker"])

    async def on_progress(progress, total, message) -> None:
        if not marker.exists():
            marker.write_text(json.dumps({"client": os.getpid(), "server": children() if not spec["url"] else []}))

    if spec["url"]:
        http = create_mcp_http_client(headers={"Authorization": f"Bearer {spec['token']}"})
        transport = streamable_http_client(spec["url"], http_client=http)
    else:
        transport = StdioServerParameters(**spec["server"])
    async with Client(transport) as client:
        await client.call_tool("index_folder", {"folder": spec["folder"]}, progress_callback=on_progress)
        await anyio.sleep_forever()  # the test kills us; finishing first is fine too


if __name__ == "__main__":
    anyio.run(main, json.loads(sys.argv[1]))
