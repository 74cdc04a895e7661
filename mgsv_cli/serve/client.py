"""How ``mgsv suggest``, ``render`` and ``export`` hand their work to a running ``mgsv serve``.

Standard library only (``http.client``): the client never imports torch, FastAPI or the
server. Each ``try_*`` function returns what the command would have computed itself,
or None when it should do the work itself: no server (no state file, a dead pid,
nothing answering, another program on the port), a server of another mgsv version,
one that runs other options (index, checkpoint, encoders, device, data folder: the
server decides and answers 409), one that refuses the request itself (any error
answer with a ``reason``: other options, a token it does not take, a body it does not
read), or one that failed unexpectedly. A library error the server met (a bad clip, an
existing output: an error answer without a ``reason``) is raised here as the same
``MgsvError`` class with the same message, so the command prints it and exits with its
code exactly as it would have in-process.

Relative paths are sent through a link to this process's working folder, and every path
in the answer (and in error messages) made from them is given back in the form the
command would have printed (:class:`_Paths`).
"""
from __future__ import annotations

import dataclasses
import http.client
import json
import os
import secrets
from pathlib import Path
from typing import Any

from mgsv_cli import __version__, errors, paths
from mgsv_cli.serve import state as server_state

CONNECT_TIMEOUT = 2.0  # seconds to reach the server; a stale state file costs at most this
WORK_TIMEOUT = 3600.0  # seconds the server may work on one request (a long render)


# ---------------------------------------------------------------- HTTP


def _call(st: server_state.ServerState, method: str, path: str, body: Any = None,
          timeout: float = WORK_TIMEOUT) -> tuple[int, Any] | None:
    """``(status, JSON)`` from the server of ``st``, or None when nothing (of ours) answered."""
    conn = http.client.HTTPConnection(st.connect_host, st.port, timeout=CONNECT_TIMEOUT)
    try:
        conn.connect()
        conn.sock.settimeout(timeout)
        headers = {"Authorization": f"Bearer {st.token}", "Accept": "application/json"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        if st.instance and response.getheader("x-mgsv-instance") != st.instance:
            return None  # another program (or another server) on that port
        return response.status, json.loads(raw)
    except (OSError, http.client.HTTPException, ValueError):
        return None
    finally:
        conn.close()


def health(st: server_state.ServerState, timeout: float = 2.0) -> dict | None:
    """The server's ``/api/health`` answer, or None when it does not answer."""
    reply = _call(st, "GET", "/api/health", timeout=timeout)
    if reply is None or reply[0] != 200 or not isinstance(reply[1], dict) or not reply[1].get("ok"):
        return None
    return reply[1]


def running_server() -> server_state.ServerState | None:
    """The state of a live server of this mgsv version (its file written, its pid alive)."""
    st = server_state.live_state()
    if st is None or st.version != __version__:
        return None
    return st


def _library_error(data: dict, rewrite) -> errors.MgsvError:
    message = rewrite(str(data.get("error", "")))
    kind = getattr(errors, str(data.get("type", "")), None)
    code = int(data["exit_code"])
    if isinstance(kind, type) and issubclass(kind, errors.MgsvError) and kind.exit_code == code:
        return kind(message)
    error = errors.MgsvError(message)
    error.exit_code = code
    return error


def _served(path: str, body: dict, rewrite=lambda text: text) -> dict | None:
    """The server's answer to ``body``; None to work in-process; raises its library errors."""
    st = running_server()
    if st is None:
        return None
    reply = _call(st, "POST", path, body)
    if reply is None:
        return None
    status, data = reply
    if not isinstance(data, dict):
        return None
    if status == 200:
        return data
    if 400 <= status < 500 and "exit_code" in data and "reason" not in data:
        raise _library_error(data, rewrite)
    return None  # the server's own refusal (options differ, token refused, ...) or its bug: the command does it itself


# ---------------------------------------------------------------- paths as the command would print them


class _Paths:
    """A command's relative path arguments, sent so that every path the library makes from
    them (a default output beside the video, an error message) can be given back as the
    command would have printed it in-process.

    They travel through a symlink to this process's working folder, made for the request
    in the private state folder and removed after: ``clip.mp4`` goes as ``LINK/clip.mp4``,
    the server's ``LINK/clip.mgsv.mp4`` comes back as ``clip.mgsv.mp4``, while a path the
    library resolves (a remembered record's video) is the real path, as in-process. No
    server is used for arguments climbing out with ``..`` or where symlinks cannot be made.
    """

    def __init__(self) -> None:
        self.link: Path | None = None
        self.usable = True

    def send(self, value: str | os.PathLike | None) -> str | None:
        if value is None:
            return None
        given = Path(value).expanduser()
        if given.is_absolute():
            return str(given)
        if ".." in given.parts or not self._make_link():
            self.usable = False
            return None
        assert self.link is not None  # _make_link() made it
        return str(self.link / given)

    def _make_link(self) -> bool:
        if self.link is not None:
            return True
        try:
            folder = server_state.state_dir(create=True)
            for old in folder.glob("cwd-*"):  # left by a client that was killed mid-request
                pid = old.name.split("-")[1]
                if old.is_symlink() and pid.isdigit() and not server_state.pid_alive(int(pid)):
                    paths.remove_quietly(old)
            link = folder / f"cwd-{os.getpid()}-{secrets.token_hex(4)}"
            os.symlink(os.getcwd(), link, target_is_directory=True)
        except (OSError, NotImplementedError):
            return False
        self.link = link
        return True

    def path(self, value: str) -> Path:
        prefix = f"{self.link}{os.sep}" if self.link is not None else None
        return Path(value[len(prefix):] if prefix and value.startswith(prefix) else value)

    def text(self, message: str) -> str:
        return message.replace(f"{self.link}{os.sep}", "") if self.link is not None else message

    def close(self) -> None:
        if self.link is not None:
            paths.remove_quietly(self.link)


def _absolute(value) -> str | None:
    if value is None:
        return None
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else Path.cwd() / path)


# ---------------------------------------------------------------- the commands


def try_suggest(video: str | os.PathLike, *, top: int, snap: str | None, include_short: bool = False, index=None,
                checkpoint=None, untrained: bool = False, encoders: str | None = None, device: str | None = None,
                weights_dir=None, failed=None, fit: str = "cut"):
    """``mgsv suggest VIDEO`` by the running server: the ``SuggestionResult`` (remembered, as the
    command remembers it), or None to run in-process. The options are the command's effective
    ones; ``failed(error)`` is called before a library error the server met is raised."""
    from mgsv_cli.editor.record import Suggestion, SuggestionResult

    options = {"index": _absolute(index), "checkpoint": _absolute(checkpoint), "untrained": bool(untrained),
               "encoders": encoders, "device": device, "weights_dir": _absolute(weights_dir),
               "data_dir": str(paths.data_dir())}
    body = {"video": _absolute(video), "top": top, "snap": snap, "include_short": bool(include_short),
            "remember": True, "exact": True, "options": options, "fit": fit}
    try:
        data = _served("/api/suggest", body)
    except errors.MgsvError as exc:
        if failed is not None:
            failed(exc)
        raise
    if data is None:
        return None
    exact = dict(data["exact"])
    exact["suggestions"] = [Suggestion(**s) for s in exact["suggestions"]]
    return SuggestionResult(**exact)


def try_render(video: str | os.PathLike, *, pick: int | None = None, track=None, start: float | None = None,
               out=None, mix: str, fade_in: float, fade_out: float, loudness: float, snap: str | None = None,
               index=None, force: bool = False, fit: str | None = None):
    """``mgsv render VIDEO`` (one video) by the running server: the ``RenderResult``, or None."""
    if running_server() is None:
        return None
    from mgsv_cli.editor import render as rendering

    paths_ = _Paths()
    try:
        body = {
            "video": paths_.send(video), "pick": pick, "track": paths_.send(track), "start": start,
            "out": paths_.send(out), "mix": mix, "fade_in": fade_in, "fade_out": fade_out, "loudness": loudness,
            "snap": snap or "off", "index": paths_.send(index), "force": force, "fit": fit,
        }
        data = _served("/api/render", body, paths_.text) if paths_.usable else None
        if data is None:
            return None
        exact = dict(data["exact"])
        for key in ("out_path", "video", "track"):
            exact[key] = paths_.path(exact[key])
        exact["warnings"] = [paths_.text(w) for w in exact.get("warnings", [])]
        return rendering.RenderResult(**exact)
    finally:
        paths_.close()


@dataclasses.dataclass(frozen=True)
class ServedExport:
    """What the server's export wrote (the fields of ``editor.export.ExportResult`` the CLI prints)."""

    out: Path
    warnings: list[str]


def try_export(video: str | os.PathLike, *, pick: int, fmt: str, out=None, force: bool = False,
               snap: str | None = None, frame_rate: float | None = None, index=None, fit: str | None = None):
    """``mgsv export VIDEO`` by the running server: ``(exported, record, snap)`` as the command
    computes them (``record`` with the cut moved when snapped, ``snap`` None unless snapped),
    or None."""
    if running_server() is None:
        return None
    from mgsv_cli.editor.record import Suggestion, SuggestionResult

    paths_ = _Paths()
    try:
        body = {"video": paths_.send(video), "pick": pick, "format": fmt, "out": paths_.send(out), "force": force,
                "snap": snap or "off", "frame_rate": frame_rate, "index": paths_.send(index), "fit": fit}
        data = _served("/api/export", body, paths_.text) if paths_.usable else None
        if data is None:
            return None
        record = SuggestionResult.from_json(data["record"]).with_entry(Suggestion(**data["entry_exact"]))
        snap_info = None
        if data.get("snap"):
            from mgsv_cli.editor.snapping import Snap

            snap_info = Snap(**data["snap"])
        exported = ServedExport(paths_.path(data["out"]), [paths_.text(w) for w in data.get("warnings", [])])
        return exported, record, snap_info
    finally:
        paths_.close()
