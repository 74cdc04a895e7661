"""Running ``mgsv serve``: bind, load the models once, publish the state file, serve until stopped.

The socket is bound before the models load (a busy port fails at once); the state file
is written, and the page's URL reported, only once uvicorn accepts connections; Ctrl-C
or SIGTERM stop it gracefully, and the state file is removed on the way out.
"""
from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
import sys
import threading
from typing import Callable

from mgsv_cli import __version__
from mgsv_cli.errors import UsageError, os_error_cause
from mgsv_cli.serve import client, state
from mgsv_cli.serve.files import DEFAULT_MAX_UPLOAD_BYTES

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def exposure_warning(host: str) -> str | None:
    """What to tell the user when ``--host`` opens the server beyond this machine (None: it does not)."""
    if host in LOOPBACK:
        return None
    where = "every network interface" if host in ("0.0.0.0", "::", "") else f"the interface {host}"
    return (f"listening on {where}: your music library, clips and renders become reachable by other machines "
            "on the network, to anyone who learns the access token; use the default --host 127.0.0.1 unless "
            "you mean it")


def connect_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to ``host``."""
    if host in ("0.0.0.0", "", "localhost"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def page_url(host: str, port: int, token: str) -> str:
    """The page's address with the token in the fragment (never sent to the server, nor logged)."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/#token={token}"


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free one); UsageError when it cannot be had."""
    address = "127.0.0.1" if host == "localhost" else host
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if os.name == "posix":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and address == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((address, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {os_error_cause(exc)} "
                         "(is another program using the port? try --port)") from None
    sock.set_inheritable(True)
    return sock


def uvicorn_server_class():
    import uvicorn
    from uvicorn.server import HANDLED_SIGNALS

    class Server(uvicorn.Server):
        """uvicorn's server, telling us when it accepts connections, and returning normally
        after a Ctrl-C or SIGTERM (uvicorn re-raises the signal, which would skip our cleanup)."""

        def __init__(self, config, on_started: Callable[[], None]):
            super().__init__(config)
            self._on_started = on_started

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=sockets)
            if self.started and not self.should_exit:
                self._on_started()

        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            original = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    return Server


def run_server(*, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, index_path=None, checkpoint=None,
               untrained: bool = False, encoders: str | None = None, device: str = "auto", offline: bool = False,
               weights_dir=None, status: Callable[[str], None] | None = None,
               on_ready: Callable[[state.ServerState], None] | None = None,
               max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, encoders_obj=None) -> None:
    """Serve until stopped: the models and index loaded once (options as ``mgsv suggest``'s).

    ``on_ready(state)`` is called once the server accepts connections (the state file is
    written by then); ``status(message)`` reports loading. Raises UsageError when another
    server of this ``MGSV_HOME`` runs or the port is taken, and the loading errors of
    :meth:`Suggester.open` (no index, no checkpoint, missing weights).
    """
    running = state.live_state()
    if running is not None and client.health(running) is not None:
        raise UsageError(f"an mgsv serve is already running at {running.url.split('#')[0]} (pid {running.pid}); "
                         "stop it first (its commands use it: nothing to start)")
    sock = bind_socket(host, port)
    actual_port = sock.getsockname()[1]
    log_to_stderr(logging.getLogger("mgsv.serve"), "mgsv serve")
    try:
        from mgsv_cli.serve.app import create_app
        from mgsv_cli.serve.engine import Engine

        engine = Engine(index_path=index_path, checkpoint=checkpoint, untrained=untrained, encoders=encoders,
                        device=device, offline=offline, weights_dir=weights_dir, status=status,
                        encoders_obj=encoders_obj)
        token, instance = state.new_token(), secrets.token_hex(8)
        try:
            import uvicorn

            app = create_app(engine, token=token, port=actual_port, bind_host=host, instance=instance,
                             max_upload_bytes=max_upload_bytes)
            reach = connect_host(host)
            published = state.ServerState(
                pid=os.getpid(), port=actual_port, host=host, connect_host=reach, token=token,
                url=page_url(reach, actual_port, token), version=__version__, instance=instance,
                options={"index": str(engine.index_path), "checkpoint": str(engine.checkpoint_file or ""),
                         "untrained": untrained, "encoders": engine.encoders_kind,
                         "device": str(engine.suggester.device)},
            )

            def started() -> None:
                state.write_state(published)
                if on_ready is not None:
                    on_ready(published)

            config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                    timeout_graceful_shutdown=5, server_header=False)
            uvicorn_server_class()(config, started).run(sockets=[sock])
        finally:
            state.remove_state(token)
            engine.close()
    finally:
        sock.close()


def log_to_stderr(logger: logging.Logger, label: str) -> None:
    """``logger``'s lines on stderr, one per line as ``TIME LABEL LEVEL: message``, INFO and up, not
    passed to the root logger (``mgsv serve``'s and ``mgsv mcp``'s logs)."""
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"%(asctime)s {label} %(levelname)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
