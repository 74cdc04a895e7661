"""``mgsv mcp``: the public API as a Model Context Protocol server for agents (``mcp``)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from mgsv_cli.cli.app import app
from mgsv_cli.cli.options import STORE_HELP, Checkpoint, Device, Offline, StoreEncoders, Untrained, WeightsDir
from mgsv_cli.cli.output import err_console, settings

DEFAULT_MCP_PORT = 8766  # beside mgsv serve's 8765


@app.command("mcp", epilog="Example: mgsv mcp --library ~/music/index.sqlite --allow ~/Videos   (an MCP client starts it; see the README for its JSON configuration)")
def mcp_command(
    library: Optional[str] = typer.Option(None, "--library", "--index", help=STORE_HELP),
    allow: List[Path] = typer.Option([], "--allow", help="a folder whose clips and music the agent may use (repeat for several); the output folder is readable too"),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", help="where renders and timelines are written, the only place the server writes (default: mcp/outputs in mgsv's data folder)"),
    checkpoint: Checkpoint = None,
    untrained: Untrained = False,
    encoders: StoreEncoders = None,
    device: Device = None,
    offline: Offline = False,
    weights_dir: WeightsDir = None,
    http: bool = typer.Option(False, "--http", help="serve streamable HTTP (at /mcp) instead of stdio; needs the printed token"),
    host: str = typer.Option("127.0.0.1", "--host", help="with --http: address to listen on; 0.0.0.0 opens it to other machines (a warning says so)"),
    port: int = typer.Option(DEFAULT_MCP_PORT, "--port", help="with --http: port to listen on, 0 to 65535 (0: any free port)"),
    token: Optional[str] = typer.Option(None, "--token", envvar="MGSV_MCP_TOKEN", help="with --http: the access token clients must send (default: a new one, printed; or MGSV_MCP_TOKEN)"),
) -> None:
    """Serve the library to AI agents over the Model Context Protocol: index, suggest, render, export as tools.

    By default it speaks MCP on stdin/stdout, as MCP clients (Claude Desktop, IDEs, agents) start it; with --http,
    streamable HTTP on 127.0.0.1 with a bearer token and mgsv serve's Host check. The models load on the first
    suggestion and stay loaded. Only clips and music under --allow folders are read, and outputs go to --output-dir.
    """
    from rich.markup import escape

    from mgsv_cli.api import SuggestRequest
    from mgsv_cli.editor.requests import cli_flag
    from mgsv_cli.errors import UsageError
    from mgsv_cli.mcp.tools import McpOptions, Workspace

    if not http:
        given = [flag for flag, on in (("--host", host != "127.0.0.1"), ("--port", port != DEFAULT_MCP_PORT),
                                       ("--token", token is not None)) if on]
        if given:
            raise UsageError(f"{', '.join(given)} go with --http (stdio needs no address)")
    if not 0 <= port <= 65535:  # checked here, not by typer, whose range metavar crowds the help's columns
        raise UsageError(f"--port {port}: expected 0 to 65535")
    _require_sdk()
    request = SuggestRequest.build(settings(), cli_flag, index=library, checkpoint=checkpoint, untrained=untrained,
                                   encoders=encoders, device=device, offline=offline, weights_dir=weights_dir)
    workspace = Workspace(McpOptions(library=request.index, checkpoint=request.checkpoint,
                                     untrained=request.untrained, encoders=request.encoders, device=request.device,
                                     offline=request.offline, weights_dir=request.weights_dir, allow=tuple(allow),
                                     output_dir=output_dir))
    try:
        if not http:
            from mgsv_cli.mcp.server import run_stdio

            # stderr only: stdout carries the protocol.
            err_console.print(f"mgsv mcp: serving {escape(workspace.library.uri)} over stdio", style="dim",
                              highlight=False, soft_wrap=True)
            run_stdio(workspace)
            return
        _serve_http(workspace, host, port, token)
    finally:
        workspace.close()


def _serve_http(workspace, host: str, port: int, token: Optional[str]) -> None:
    from rich.markup import escape

    from mgsv_cli.mcp.server import run_http
    from mgsv_cli.serve.server import exposure_warning
    from mgsv_cli.serve.state import new_token

    warning = exposure_warning(host)
    if warning:
        err_console.print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    token = token or new_token()

    def ready(url: str) -> None:
        # The first two lines on stdout: where, and the header clients must send.
        typer.echo(url)
        typer.echo(f"Authorization: Bearer {token}")
        sys.stdout.flush()
        err_console.print(f"mgsv mcp: serving {escape(workspace.library.uri)} on {escape(url)}; Ctrl-C stops it",
                          style="dim", highlight=False, soft_wrap=True)

    run_http(workspace, host=host, port=port, token=token, on_ready=ready)
    err_console.print("mgsv mcp stopped", style="dim")


def _require_sdk() -> None:
    """The MCP SDK is an extra (``pip install 'mgsv[mcp]'``): say so in one line when it is missing."""
    import importlib.util

    from mgsv_cli.errors import UsageError

    if importlib.util.find_spec("mcp") is None:
        raise UsageError("mgsv mcp needs the MCP Python SDK: pip install 'mgsv[mcp]' (or pip install mcp)")
