"""The MCP server of ``mgsv mcp``: the tools registered with the official ``mcp`` SDK, errors made
tool errors in one place, and the two transports.

* **Tools** (:func:`build_server`): ``library_info``, ``list_tracks``, ``index_folder``,
  ``suggest_music``, ``render_video``, ``export_timeline``, each a call of
  :class:`~mgsv_cli.mcp.tools.Workspace`. Their descriptions and input schemas are written
  for a model: units (seconds, LUFS), absolute paths, what each mode does, what to call next.
* **Errors** (:func:`one_line_errors`, and :class:`_Server` for arguments that fail the
  schema): an ``MgsvError`` becomes a tool error carrying its one-line message; anything
  else a one-line "internal error" (logged on stderr, with the traceback only under
  ``MGSV_DEBUG``); never a traceback to the client.
* **Long work**: ``index_folder`` sends progress notifications (a percentage and what is
  being done) and stops between two files when its request is cancelled or the client
  goes away: what was committed stays, the library is never left half-written.
* **stdio** (:func:`run_stdio`, the default): the SDK moves file descriptor 1 to stderr
  while it serves, so nothing but the protocol reaches stdout (ffmpeg children, stray
  prints, warnings). **Streamable HTTP** (:func:`run_http`): bound like ``mgsv serve``
  (127.0.0.1 by default, a busy port fails at once), behind its guards: the Host check and
  security headers (``serve.app.Guard``, the SDK's DNS-rebinding protection given the same
  names), then the bearer token (``serve.app.token_matches``), on its uvicorn server.

Functions here (not the tool methods) import the SDK, so this module is only imported by
``mgsv mcp`` itself. No ``from __future__ import annotations``: the SDK reads the tools'
annotations (``Annotated[..., Field(...)]``) to build their schemas, in this module's scope.
"""
import functools
import logging
import os
from typing import Annotated, Any, Callable, Literal, Optional

from pydantic import Field

from mgsv_cli import __version__
from mgsv_cli.errors import MgsvError, first_line
from mgsv_cli.mcp.tools import Workspace

log = logging.getLogger("mgsv.mcp")

MCP_PATH = "/mcp"
INSTRUCTIONS = (
    "mgsv picks background music for short videos from the user's own music library, with the moment "
    "of each track to use. Typical flow: library_info (what is indexed, which folders you may use) -> "
    "index_folder (only when the library is empty or the user added music) -> suggest_music for a clip -> "
    "render_video (the clip with the chosen music) or export_timeline (for an editing program). All paths "
    "are absolute paths on the server's machine; all times are in seconds. Clips must lie under the "
    "readable folders library_info lists; outputs are written to its output folder."
)

Snap = Literal["off", "beat"]
Fit = Literal["cut", "ending", "loop"]
FIT_HELP = ("how the music fits the clip: cut (the moment, as long as the clip, faded out; the usual default); "
            "ending (starts at the moment and ends on the track's own ending at the clip's last frame, through "
            "one crossfaded join on a bar line); loop (repeats whole bars or sections to fill a clip longer "
            "than the track). Tracks without a clear beat fall back to cut and say why.")
Mix = Literal["replace", "original", "duck"]
Format = Literal["fcpxml", "fcp7", "edl", "otio"]


def one_line_errors(fn: Callable) -> Callable:
    """The one place a tool's failure becomes a tool error: an ``MgsvError`` keeps its one-line
    message; anything else is an internal error, one line out, logged here on stderr."""
    from mcp.server.mcpserver.exceptions import ToolError

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MgsvError as exc:
            raise ToolError(first_line(exc)) from None
        except Exception as exc:  # a bug, not bad input: the client learns only that it happened
            log.error("internal error in %s: %s: %s", fn.__name__, type(exc).__name__, first_line(exc),
                      exc_info=bool(os.environ.get("MGSV_DEBUG")))
            raise ToolError(f"internal error: {type(exc).__name__} (see the mgsv mcp server's log)") from None

    return call


def _server_class():
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError
    from pydantic import ValidationError

    class _Server(MCPServer):
        """The SDK's server, its tool errors in one line: a tool's own message as it is (the SDK
        would put "Error executing tool NAME: " before it), and which arguments did not fit
        the tool's schema."""

        async def call_tool(self, name, arguments, context=None):
            try:
                return await super().call_tool(name, arguments, context)
            except ToolError as exc:
                cause = exc.__cause__
                if isinstance(cause, ValidationError):
                    problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ())) or 'arguments'}: "
                                         f"{e.get('msg')}" for e in cause.errors())
                    raise ToolError(f"bad arguments for {name}: {problems}") from cause
                if type(cause) is ToolError:  # raised by one_line_errors: its message is the one
                    raise ToolError(str(cause)) from None
                raise

    return _Server


def build_server(workspace: Workspace):
    """The MCP server whose tools are ``workspace``'s (the SDK's ``MCPServer``)."""
    import anyio.from_thread
    from mcp.server.mcpserver import Context
    from mcp.types import ToolAnnotations

    server = _server_class()("mgsv", version=__version__, instructions=INSTRUCTIONS, log_level="WARNING")
    reading = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)
    writing = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False)

    @server.tool(name="library_info", title="The music library", annotations=reading, description=(
        "What the music library holds (tracks, tracks with beat grids, files that could not be indexed, the "
        "encoders it was built with), whether the models are loaded, the folders this server may read clips "
        "and music from (readable_folders) and the folder it writes renders and timelines to (output_folder). "
        "Call it first."))
    @one_line_errors
    def library_info() -> dict[str, Any]:
        return workspace.library_info()

    @server.tool(name="list_tracks", title="List the library's tracks", annotations=reading, description=(
        "The library's tracks, a page at a time: id, absolute path, name, title, artist, album, duration "
        "(seconds). `contains` keeps those whose path, title, artist or album contain the text (any case). "
        "The paths are what render_video's `track` takes."))
    @one_line_errors
    def list_tracks(
        offset: Annotated[int, Field(ge=0, description="tracks to skip (for the next page)")] = 0,
        limit: Annotated[int, Field(ge=1, le=500, description="how many tracks to return")] = 50,
        contains: Annotated[Optional[str], Field(description="only tracks whose path or tags contain this")] = None,
    ) -> dict[str, Any]:
        return workspace.list_tracks(offset, limit, contains)

    @server.tool(name="index_folder", title="Index a music folder", annotations=ToolAnnotations(
        read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False), description=(
        "Add the audio files (mp3 wav flac m4a aac ogg opus) under a folder to the library, recursively. Only "
        "new or changed files are embedded; unchanged ones are not even read, so running it again is cheap. "
        "Long: about a second per minute of music on a GPU, much more on a CPU; progress is reported. Files "
        "that cannot be read are listed in `failed` and skipped on later runs while unchanged. The folder must "
        "lie under one of library_info's readable_folders."))
    @one_line_errors
    def index_folder(
        ctx: Context,
        folder: Annotated[str, Field(description="absolute path of the music folder")],
        prune: Annotated[bool, Field(description="also drop tracks whose files are gone")] = False,
        force: Annotated[bool, Field(description="embed every file again (slow; after changing encoders)")] = False,
        retry_failed: Annotated[bool, Field(description="try the files that failed before again")] = False,
    ) -> dict[str, Any]:
        def progress(percent: float, message: str) -> None:
            # Stop here, between two files, when the call was cancelled or the client is gone.
            anyio.from_thread.check_cancelled()
            try:
                anyio.from_thread.run(ctx.report_progress, percent, 100.0, message)
            except Exception:  # a notification that cannot be sent never stops the work
                pass

        done = workspace.index_folder(folder, prune=prune, force=force, retry_failed=retry_failed, progress=progress)
        progress(100.0, "done")
        return done

    @server.tool(name="suggest_music", title="Suggest music for a clip", annotations=writing, description=(
        "Rank the library's tracks for a video clip. Returns the best `top` tracks, best first, each with: "
        "track (absolute path), title, artist, score (the model's match of the track to the clip, -2 to 2), "
        "the cut to use, start and end in seconds into the track (exactly as long as the clip, inside the "
        "track), the model's own moment (predicted_start, predicted_end), relevance (the match of each 2.5 s "
        "window of the track's first 240 s, 0 to 1), fits (false: the track is shorter than the clip) and why "
        "(one sentence). With fit ending or loop each suggestion also has an edit: the spans of the track that "
        "play (seconds) and the joins between them, or the reason it fell back to a plain cut. The result is "
        "remembered for render_video and export_timeline (pick = its rank). The first call loads the models "
        "(seconds to a minute); later ones reuse them."))
    @one_line_errors
    def suggest_music(
        video: Annotated[str, Field(description="absolute path of the video clip (mp4 mov mkv webm avi m4v)")],
        top: Annotated[int, Field(ge=1, le=50, description="how many tracks to return")] = 5,
        snap: Annotated[Snap, Field(description="beat: start each cut on the nearest downbeat or beat; off: "
                                               "where the model put it")] = "off",
        include_short: Annotated[bool, Field(description="also rank tracks shorter than the clip (silence "
                                                          "would fill the rest)")] = False,
        fit: Annotated[Optional[Fit], Field(description=FIT_HELP)] = None,
    ) -> dict[str, Any]:
        return workspace.suggest(video, top=top, snap=snap, include_short=include_short, fit=fit)

    @server.tool(name="render_video", title="Put the music under the clip", annotations=writing, description=(
        "Write the clip with music: suggestion `pick` of the last suggest_music for this clip (1 = best), or a "
        "given `track` from `start` seconds. The music is cut to the clip's length, faded in and out, "
        "loudness-normalised; the picture is copied, never re-encoded. Written to the output folder as "
        "<clip>.mgsv.<ext> unless `out` names another file there; an existing file needs force. Returns the "
        "output's path, the cut used (start, end in seconds), the loudness reached and any warnings."))
    @one_line_errors
    def render_video(
        video: Annotated[str, Field(description="absolute path of the clip")],
        pick: Annotated[Optional[int], Field(ge=1, description="rank of the suggestion to use (default 1); "
                                                                "not with track")] = None,
        track: Annotated[Optional[str], Field(description="absolute path of a library track to use instead "
                                                            "(with start)")] = None,
        start: Annotated[Optional[float], Field(ge=0, description="seconds into `track` where the music "
                                                                   "starts (with track)")] = None,
        out: Annotated[Optional[str], Field(description="absolute output path under the output folder "
                                                         "(default: <clip>.mgsv.<ext> there)")] = None,
        mix: Annotated[Optional[Mix], Field(description="replace: music only; original: music mixed with the "
                                                         "clip's own sound; duck: music lowered while the clip "
                                                         "speaks (default: the user's setting, else replace)")] = None,
        fade_in: Annotated[Optional[float], Field(ge=0, description="fade-in, seconds (default 0.5)")] = None,
        fade_out: Annotated[Optional[float], Field(ge=0, description="fade-out, seconds (default 1.0)")] = None,
        loudness: Annotated[Optional[float], Field(description="target loudness, LUFS (default -16)")] = None,
        snap: Annotated[Optional[Snap], Field(description="beat: move the start onto the nearest "
                                                           "downbeat/beat")] = None,
        force: Annotated[bool, Field(description="replace an existing output file")] = False,
        fit: Annotated[Optional[Fit], Field(description=FIT_HELP + " Default: as suggest_music made it")] = None,
    ) -> dict[str, Any]:
        return workspace.render(video, pick=pick, track=track, start=start, out=out, mix=mix, fade_in=fade_in,
                                fade_out=fade_out, loudness=loudness, snap=snap, force=force, fit=fit)

    @server.tool(name="export_timeline", title="Export a timeline", annotations=writing, description=(
        "Write the suggestion `pick` of the last suggest_music for this clip as a timeline for an editing "
        "program, the clip on V1 and the music cut on A1: fcpxml (Final Cut Pro), fcp7 (Premiere, Resolve), "
        "edl (CMX 3600, the music only), otio (OpenTimelineIO). Written to the output folder as "
        "<clip>.mgsv.<ext> unless `out` names another file there. Returns its path and the cut (seconds)."))
    @one_line_errors
    def export_timeline(
        video: Annotated[str, Field(description="absolute path of the clip")],
        format: Annotated[Optional[Format], Field(description="timeline format (default: the user's setting, "
                                                               "else fcpxml)")] = None,
        pick: Annotated[Optional[int], Field(ge=1, description="rank of the suggestion (default 1)")] = None,
        out: Annotated[Optional[str], Field(description="absolute output path under the output folder")] = None,
        snap: Annotated[Optional[Snap], Field(description="beat: move the cut's start onto the beat")] = None,
        start: Annotated[Optional[float], Field(ge=0, description="move the cut to start here, seconds into "
                                                                   "the track (same length)")] = None,
        frame_rate: Annotated[Optional[float], Field(gt=0, description="timeline frame rate (default: the "
                                                                        "clip's)")] = None,
        force: Annotated[bool, Field(description="replace an existing output file")] = False,
        fit: Annotated[Optional[Fit], Field(description=FIT_HELP + " Default: as suggest_music made it")] = None,
    ) -> dict[str, Any]:
        return workspace.export(video, format=format, pick=pick, out=out, snap=snap, start=start,
                                frame_rate=frame_rate, force=force, fit=fit)

    return server


def _quiet_logging() -> None:
    """Our log lines on stderr, one per line (stdout carries the protocol on stdio)."""
    from mgsv_cli.serve.server import log_to_stderr

    log_to_stderr(log, "mgsv mcp")


def run_stdio(workspace: Workspace) -> None:
    """Serve over this process's stdin/stdout until the client closes them, or goes away (a
    killed client: the pipe breaks under the next message, which ends the session too)."""
    import anyio

    server = build_server(workspace)
    _quiet_logging()
    try:
        anyio.run(server.run_stdio_async)
    except BaseException as exc:
        if not _client_gone(exc):
            raise
        log.info("the client went away; stopping")


def _client_gone(exc: BaseException) -> bool:
    """Whether ``exc`` (an exception group, as anyio's task groups raise them) says only that the
    other end of the pipes is gone."""
    if isinstance(exc, (BrokenPipeError, ConnectionResetError)):
        return True
    inner = getattr(exc, "exceptions", None) or ()
    return bool(inner) and all(_client_gone(e) for e in inner)


def run_http(workspace: Workspace, *, host: str, port: int, token: str,
             on_ready: Callable[[str], None] | None = None) -> None:
    """Serve streamable HTTP on ``host:port`` (0: a free port) at ``/mcp`` until stopped;
    ``on_ready(url)`` once it accepts connections."""
    import secrets

    import uvicorn
    from mcp.server.transport_security import TransportSecuritySettings

    from mgsv_cli.serve.app import Guard, allowed_hosts
    from mgsv_cli.serve.server import bind_socket, connect_host, uvicorn_server_class

    sock = bind_socket(host, port)
    try:
        actual = sock.getsockname()[1]
        allowed = allowed_hosts(host, actual)
        # The SDK's own check, given the names serve's Guard answers to (a wildcard bind: Guard alone).
        security = TransportSecuritySettings(
            enable_dns_rebinding_protection=allowed is not None, allowed_hosts=sorted(allowed or ()),
            allowed_origins=sorted(f"http://{name}" for name in allowed or ()))
        server = build_server(workspace)
        _quiet_logging()
        app = server.streamable_http_app(streamable_http_path=MCP_PATH, transport_security=security, host=host)
        app = Guard(_TokenGuard(app, token), allowed=allowed, port=actual, instance=secrets.token_hex(8))
        reach = connect_host(host)
        url = f"http://{f'[{reach}]' if ':' in reach else reach}:{actual}{MCP_PATH}"
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                timeout_graceful_shutdown=5, server_header=False)
        uvicorn_server_class()(config, lambda: on_ready(url) if on_ready else None).run(sockets=[sock])
    finally:
        sock.close()


class _TokenGuard:
    """Every HTTP request needs ``Authorization: Bearer TOKEN`` (``mgsv serve``'s check and 401)."""

    def __init__(self, app, token: str):
        self.app = app
        self.token = token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from mgsv_cli.serve.app import bearer_token, refusal, token_matches

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if not token_matches(bearer_token(headers.get("authorization")), self.token):
            response = refusal(401, "missing or wrong access token: send `Authorization: Bearer TOKEN` with the "
                               "token `mgsv mcp --http` printed", headers={"WWW-Authenticate": "Bearer"})
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)
