"""The state file that says an ``mgsv serve`` is running: where it listens, its token, its pid.

``mgsv serve`` writes it atomically once it answers requests and removes it when it stops;
``mgsv suggest``/``render``/``export`` read it to find the server. A file left behind by a
killed server is ignored (its pid is gone, or nothing answers on its port).

It lives in the user's runtime folder (``$XDG_RUNTIME_DIR/mgsv`` on Linux), or under
``MGSV_HOME`` (``$MGSV_HOME/data/run``) when that is set, so that a test or a second
installation with its own ``MGSV_HOME`` never finds another one's server. The folder
must belong to the user and be closed to others, else ``paths.data_dir()/run`` is used.
The file holds the access token: it is created readable by its owner only.
"""
from __future__ import annotations

import json
import os
import secrets
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from mgsv_cli import paths

STATE_NAME = "serve.json"
STATE_VERSION = 1


@dataclass(frozen=True)
class ServerState:
    """What a running server publishes about itself."""

    pid: int
    port: int
    host: str  # the address it is bound to
    connect_host: str  # where a client on this machine reaches it
    token: str
    url: str  # the page, with the token in the fragment
    version: str
    instance: str = ""  # random per run; the server echoes it in the x-mgsv-instance header
    options: dict[str, Any] = field(default_factory=dict)  # index, checkpoint, ... (for people; the server decides)
    state_version: int = STATE_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ServerState":
        known = {f.name for f in fields(cls)}
        state = cls(**{k: v for k, v in data.items() if k in known})
        if not (isinstance(state.pid, int) and isinstance(state.port, int) and 0 < state.port < 65536
                and isinstance(state.token, str) and state.token and isinstance(state.connect_host, str)):
            raise ValueError("malformed server state")
        return state


def new_token() -> str:
    """A fresh access token for one run of the server."""
    return secrets.token_urlsafe(32)


def _private_folder(folder: Path) -> bool:
    """Whether ``folder`` exists, is ours and closed to other users (POSIX; always true elsewhere)."""
    try:
        info = folder.stat()
    except OSError:
        return False
    if os.name != "posix":
        return True
    return info.st_uid == os.getuid() and (info.st_mode & 0o077) == 0


def state_dir(create: bool = False) -> Path:
    """The folder of the state file (see the module's docstring); created when ``create``."""
    fallback = paths.data_dir() / "run"
    if os.environ.get("MGSV_HOME"):
        folder = fallback
    else:
        import platformdirs

        with warnings.catch_warnings():  # "XDG_RUNTIME_DIR is not set, falling back to ..."
            warnings.simplefilter("ignore")
            folder = Path(platformdirs.user_runtime_dir(paths.APP_NAME))
        if create:
            try:
                folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            except OSError:
                folder = fallback
        if folder != fallback and not _private_folder(folder):
            folder = fallback
    if create:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder


def state_path(create_folder: bool = False) -> Path:
    return state_dir(create=create_folder) / STATE_NAME


def write_state(state: ServerState) -> Path:
    """Publish ``state`` atomically (owner-only permissions); returns the file's path."""
    target = state_path(create_folder=True)
    paths.atomic_write_text(target, state.to_json(), private=True)  # it holds the token: 0600, whatever the umask
    return target


def read_state() -> ServerState | None:
    """The published state, or None when there is none or it is unreadable."""
    try:
        data = json.loads(state_path().read_text(encoding="utf-8"))
        return ServerState.from_dict(data)
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (on Windows: assumed, the connection decides)."""
    if pid <= 0:
        return False
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: not our server
        return False
    return True


def live_state() -> ServerState | None:
    """The published state if its process still exists (a file left by a dead one is removed)."""
    state = read_state()
    if state is None:
        return None
    if not pid_alive(state.pid):
        remove_state(state.token)
        return None
    return state


def remove_state(token: str) -> None:
    """Remove the state file if it is the one published with ``token`` (never another server's)."""
    current = read_state()
    if current is not None and current.token != token:
        return
    paths.remove_quietly(state_path())
