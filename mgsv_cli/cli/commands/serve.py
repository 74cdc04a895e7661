"""``mgsv serve``: the models kept warm behind a page and a JSON API (``serve``)."""
from __future__ import annotations

import sys

import typer

from mgsv_cli.cli.app import app
from mgsv_cli.cli.options import Checkpoint, Device, Offline, Store, StoreEncoders, Untrained, WeightsDir
from mgsv_cli.cli.output import err_console, settings


@app.command("serve", epilog="Example: mgsv serve --index ~/music/index.sqlite   (open the printed address; suggest, render and export use the server while it runs)")
def serve_command(
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on; 0.0.0.0 opens it to other machines (a warning says so)"),
    port: int = typer.Option(8765, "--port", min=0, max=65535, help="port to listen on (0: any free port)"),
    index: Store = None,
    checkpoint: Checkpoint = None,
    untrained: Untrained = False,
    encoders: StoreEncoders = None,
    device: Device = None,
    offline: Offline = False,
    weights_dir: WeightsDir = None,
) -> None:
    """Keep the models warm and serve a page to hear each suggested cut under the clip and see why it was chosen.

    The first line on stdout is the page's address with its access token. While it runs, `mgsv suggest`, `render`
    and `export` hand it their work when their options match its own (`--no-server` to never). Ctrl-C stops it.
    """
    from rich.markup import escape

    from mgsv_cli.editor.requests import SuggestRequest, cli_flag
    from mgsv_cli.serve.server import exposure_warning, run_server

    request = SuggestRequest.build(settings(), cli_flag, index=index, checkpoint=checkpoint, untrained=untrained,
                                   encoders=encoders, device=device, offline=offline, weights_dir=weights_dir)
    warning = exposure_warning(host)
    if warning:
        err_console.print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    spinner = err_console.status("loading the index and models")
    spinner.start()

    def ready(state) -> None:
        spinner.stop()
        typer.echo(state.url)
        sys.stdout.flush()
        err_console.print(f"serving {escape(state.options['index'])} on {escape(state.url.split('#')[0])} "
                          f"(pid {state.pid}); open the address above; Ctrl-C stops it", style="dim", highlight=False,
                          soft_wrap=True)

    try:
        run_server(host=host, port=port, index_path=request.index, checkpoint=request.checkpoint,
                   untrained=request.untrained, encoders=request.encoders, device=request.device,
                   offline=request.offline, weights_dir=request.weights_dir,
                   status=lambda message: spinner.update(message), on_ready=ready)
    finally:
        spinner.stop()
    err_console.print("mgsv serve stopped", style="dim")
