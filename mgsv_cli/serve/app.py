"""The FastAPI application of ``mgsv serve``: the JSON API, the page, and their guards.

Guards, outermost first (:class:`Guard`): the ``Host`` header must name this server
(``127.0.0.1:PORT``, ``localhost:PORT``, ``[::1]:PORT``, or the interface ``--host``
named), so a DNS-rebinding page gets nothing; every answer carries no-sniff, no-referrer,
no-framing and a same-origin content policy; an unexpected exception becomes a JSON 500
(logged with its traceback), never a traceback sent out. Then every route but
``/api/health``, ``/`` and ``/static/*`` wants the run's token: ``Authorization: Bearer
TOKEN``, or, for what ``<video>``/``<audio>`` elements and downloads fetch (``/files/*``,
``/api/preview``, ``/docs``), ``?token=TOKEN``.

Every error answer has one shape, ``{"error", "type", "exit_code"}`` (:func:`error_response`),
whoever raised it. A library error (``MgsvError``) keeps its class name and exit code, so
the CLI's client gives it back as the same error. The server's own refusals (no or a wrong
token, a foreign Host, an unknown route or method, a malformed body, other options, a bug)
add a ``reason`` (``unauthorized``, ``forbidden_host``, ``not_found``, ``bad_request``,
``options_differ``, ``internal`` ...): the client does the work in-process then, as it
would without a server. Their exit code is the CLI's for the same fault: 2 for a request
that is wrong, 70 for a bug.

Only the index's tracks, uploads and the server's outputs are ever served
(:mod:`mgsv_cli.serve.files`).
"""
from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import re
import secrets
import socket
from http import HTTPStatus
from importlib import resources
from pathlib import Path
from typing import Literal, Mapping, Optional

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from mgsv_cli import __version__, errors
from mgsv_cli.serve import files
from mgsv_cli.serve.engine import Engine, OptionsDiffer, exact_suggestions

log = logging.getLogger("mgsv.serve")

STATIC = resources.files("mgsv_cli.serve") / "static"
STATUS_OF = (  # most specific first
    (files.NotServable, 404), (files.UploadTooLarge, 413), (files.UnsupportedUpload, 415),
    (errors.OutputExistsError, 409), (errors.IndexDatabaseError, 409), (errors.CheckpointError, 409),
    (errors.WeightsMissingError, 409), (errors.MediaError, 422), (errors.DataError, 422),
    (errors.UsageError, 400), (errors.ConfigError, 400), (errors.MgsvError, 400),
)
CSP = ("default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; style-src 'self'; "
       "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
DOCS_CSP = ("default-src 'self'; img-src 'self' data: https://fastapi.tiangolo.com; "
            "style-src 'self' https://cdn.jsdelivr.net; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
            "connect-src 'self'; frame-ancestors 'none'")


USAGE_EXIT, INTERNAL_EXIT = errors.UsageError.exit_code, 70  # the CLI's codes: a wrong request, a bug


def error_response(status: int, message: str, kind: str, exit_code: int, *, headers: Mapping[str, str] | None = None,
                   **extra) -> JSONResponse:
    """The one shape of every error answer: ``{"error", "type", "exit_code", ...extra}``."""
    return JSONResponse({"error": message, "type": kind, "exit_code": exit_code, **extra}, status_code=status,
                        headers=headers)


def refusal(status: int, message: str, *, headers: Mapping[str, str] | None = None, **extra) -> JSONResponse:
    """An error answer of the server's own (not a library error): type and reason from the HTTP status."""
    try:
        words = re.findall(r"[A-Za-z]+", HTTPStatus(status).phrase)
    except ValueError:  # a status without a name
        words = ["HTTP", "Error"]
    extra.setdefault("reason", "_".join(w.lower() for w in words))
    return error_response(status, message, "".join(w.capitalize() for w in words),
                          INTERNAL_EXIT if status >= 500 else USAGE_EXIT, headers=headers, **extra)


# ---------------------------------------------------------------- who may ask


UNAUTHORIZED = "missing or wrong access token: open the URL `mgsv serve` printed"


def token_matches(given: str | None, token: str) -> bool:
    """Whether a request's token is the run's (compared in constant time)."""
    if not given:
        return False
    return secrets.compare_digest(given.encode(), token.encode())


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header (None for any other scheme)."""
    scheme, _, value = (authorization or "").strip().partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


# ---------------------------------------------------------------- which Host headers are ours


def _wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::", "")


def allowed_hosts(bind_host: str, port: int) -> set[str] | None:
    """The Host header values this server answers, or None for "any IP address, localhost and
    this machine's name" (a server bound to every interface, 0.0.0.0 or ::)."""
    names = {f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"}
    if _wildcard(bind_host):
        return None
    if bind_host not in ("127.0.0.1", "localhost", "::1"):
        names.add(f"[{bind_host}]:{port}" if ":" in bind_host else f"{bind_host}:{port}")
    return names


def host_allowed(value: str, allowed: set[str] | None, port: int) -> bool:
    """Whether a request's Host header names this server (see :func:`allowed_hosts`).

    A name a DNS-rebinding page would use (``evil.example:PORT``) never passes: only IP
    literals, ``localhost`` and this machine's own name do, and only with our port.
    """
    value = (value or "").strip().lower()
    if allowed is not None:
        return value in allowed
    if value.startswith("["):
        address, _, rest = value[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        address, _, port_text = value.rpartition(":")
    if port_text != str(port):
        return False
    if address in ("localhost", socket.gethostname().lower(), socket.getfqdn().lower()):
        return True
    try:
        ipaddress.ip_address(address)
        return True
    except ValueError:
        return False


class Guard:
    """Host check, security headers and the last-resort JSON 500 (a pure ASGI middleware)."""

    def __init__(self, app, *, allowed: set[str] | None, port: int, instance: str):
        self.app = app
        self.allowed = allowed
        self.port = port
        self.instance = instance

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if not host_allowed(headers.get("host", ""), self.allowed, self.port):
            response = refusal(403, "forbidden: the Host header does not name this server", reason="forbidden_host")
            return await response(scope, receive, send)
        started = False
        docs = scope.get("path") == "/docs"

        async def send_with_headers(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                extra = [
                    (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"), (b"cross-origin-resource-policy", b"same-origin"),
                    (b"content-security-policy", (DOCS_CSP if docs else CSP).encode()),
                    (b"x-mgsv-instance", self.instance.encode()),
                ]
                if scope.get("path", "").startswith("/api/"):
                    extra.append((b"cache-control", b"no-store"))
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception as exc:  # a bug: logged here, a one-line JSON answer out there
            log.exception("internal error on %s %s", scope.get("method"), scope.get("path"))
            if not started:
                response = error_response(500, f"internal error: {type(exc).__name__} (see the server's log)",
                                          "InternalError", INTERNAL_EXIT, reason="internal")
                await response(scope, receive, send_with_headers)


# ---------------------------------------------------------------- request bodies


class CommandOptions(BaseModel):
    """What a CLI command asked for; the server takes the work only when it runs the same."""

    model_config = ConfigDict(extra="ignore")
    index: Optional[str] = None
    checkpoint: Optional[str] = None
    untrained: bool = False
    encoders: Optional[str] = None
    device: Optional[str] = None
    weights_dir: Optional[str] = None
    data_dir: Optional[str] = None


class SuggestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    video: str = Field(description="absolute path of a video on the server's machine (or upload it: multipart)")
    top: Optional[int] = Field(None, ge=1, le=1000, description="how many tracks (default: the settings' top_k)")
    snap: Optional[Literal["beat", "off"]] = Field(None, description="beat: start each cut on a downbeat/beat")
    include_short: bool = Field(False, description="rank tracks shorter than the clip too")
    fit: Optional[Literal["cut", "ending", "loop"]] = Field(
        None, description="fit the music to the clip (default: settings)")
    remember: bool = Field(True, description="remember it for render/export, as `mgsv suggest` does")
    options: Optional[CommandOptions] = Field(None, description="a CLI command's options (409 when they differ)")
    exact: bool = Field(False, description="also return the unrounded numbers")


class RenderBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    video: str = Field(description="absolute path of the video (an upload for the page)")
    pick: Optional[int] = Field(None, ge=1, description="remembered suggestion N (default 1)")
    track: Optional[str] = Field(None, description="music file instead of the remembered suggestion (with start)")
    start: Optional[float] = Field(None, ge=0, description="where the music starts in the track, seconds")
    out: Optional[str] = Field(
        None, description="output file; default beside the video, or the server's outputs for uploads"
    )
    mix: Optional[str] = Field(None, description="replace | original | duck (default: settings)")
    fade_in: Optional[float] = None
    fade_out: Optional[float] = None
    loudness: Optional[float] = None
    snap: Optional[Literal["beat", "off"]] = None
    fit: Optional[Literal["cut", "ending", "loop"]] = Field(None, description="default: as suggested")
    join: Optional[float] = Field(None, ge=0, description="move the edit's join to the bar line nearest this time (s)")
    index: Optional[str] = Field(None, description="index holding the tracks' beats (default: the server's)")
    force: bool = False


class ExportBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    video: str
    pick: int = Field(1, ge=1)
    format: Optional[str] = Field(None, description="fcpxml | fcp7 | edl | otio (default: settings)")
    out: Optional[str] = None
    force: bool = False
    snap: Optional[Literal["beat", "off"]] = None
    frame_rate: Optional[float] = Field(None, gt=0)
    index: Optional[str] = None
    start: Optional[float] = Field(None, ge=0, description="move the cut to start here (same length)")
    fit: Optional[Literal["cut", "ending", "loop"]] = Field(None, description="default: as suggested")
    join: Optional[float] = Field(None, ge=0, description="move the edit's join to the bar line nearest this time (s)")
    download: bool = Field(False, description="answer with the timeline file itself")


# ---------------------------------------------------------------- the application


def create_app(engine: Engine, *, token: str, port: int, bind_host: str = "127.0.0.1",
               folders: files.Folders | None = None, max_upload_bytes: int = files.DEFAULT_MAX_UPLOAD_BYTES,
               instance: str | None = None) -> FastAPI:
    """The application serving ``engine`` (the warm models) with access token ``token``.

    ``port``/``bind_host``: where it listens (for the Host check); ``instance``: echoed in the
    ``x-mgsv-instance`` header, so a client knows it reached the server of its state file.
    """
    folders = (folders or files.Folders.default()).create()
    instance = instance or secrets.token_hex(8)
    app = FastAPI(
        title="mgsv serve", version=__version__, docs_url=None, redoc_url=None, openapi_url=None,
        description=("Background music for short videos, with the models kept warm. Every route but "
                     "`/api/health` wants `Authorization: Bearer TOKEN` (the token `mgsv serve` printed); "
                     "media routes also take `?token=`. Errors are JSON: `{\"error\", \"type\", \"exit_code\"}`."),
    )
    app.state.engine = engine
    app.state.folders = folders
    bearer = HTTPBearer(auto_error=False, description="the token printed by `mgsv serve`")

    def check(value: str | None) -> None:
        if not token_matches(value, token):
            raise HTTPException(401, UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})

    def need_token(credentials: Optional[HTTPAuthorizationCredentials] = Depends(bearer)) -> None:
        check(credentials.credentials if credentials else None)

    def need_token_or_query(credentials: Optional[HTTPAuthorizationCredentials] = Depends(bearer),
                            token_param: Optional[str] = Query(None, alias="token",
                                                               description="the token, for media elements")) -> None:
        check(credentials.credentials if credentials else token_param)

    # -------------------------------------------------------- errors as JSON

    @app.exception_handler(errors.MgsvError)
    async def library_error(request: Request, exc: errors.MgsvError):
        status = next(code for kind, code in STATUS_OF if isinstance(exc, kind))
        return error_response(status, str(exc), type(exc).__name__, exc.exit_code)

    @app.exception_handler(OptionsDiffer)
    async def options_differ(request: Request, exc: OptionsDiffer):
        return error_response(409, f"not served here: {exc}", "OptionsDiffer", USAGE_EXIT, reason="options_differ")

    @app.exception_handler(HTTPException)  # ours (401, 411) and Starlette's (unknown route 404, 405)
    async def http_error(request: Request, exc: HTTPException):
        message = str(exc.detail)
        if exc.status_code in (404, 405) and message in ("Not Found", "Method Not Allowed"):
            # Starlette's bare words for an unknown route or method: say which
            message = f"{message.lower()}: {request.method} {request.url.path}"
        return refusal(exc.status_code, message, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        problems = [f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body')}: {e.get('msg')}"
                    for e in exc.errors()]
        return error_response(422, "bad request: " + "; ".join(problems), "BadRequest", USAGE_EXIT,
                              reason="bad_request")

    # -------------------------------------------------------- page and docs

    @app.get("/", include_in_schema=False)
    def page() -> Response:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(need_token_or_query)])
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=[Depends(need_token_or_query)])
    def docs(token_param: str = Query(..., alias="token")) -> HTMLResponse:
        from fastapi.openapi.docs import get_swagger_ui_html

        return get_swagger_ui_html(openapi_url=f"/openapi.json?token={token_param}", title="mgsv serve API")

    # -------------------------------------------------------- facts

    @app.get("/api/health", tags=["server"], summary="Is the server up (no token needed)")
    def health() -> dict:
        return {"ok": True, "version": __version__, "tracks": len(engine.tracks), "encoders": engine.encoders_kind,
                "untrained": engine.untrained}

    @app.get("/api/status", tags=["server"], summary="Index, model, device and defaults",
             dependencies=[Depends(need_token)])
    def status() -> dict:
        from mgsv_cli import settings
        from mgsv_cli.editor.editlist import FIT_MODES
        from mgsv_cli.editor.export import FORMATS
        from mgsv_cli.editor.render import MIX_MODES

        values = settings.load_settings()
        return {**engine.status(), "mix_modes": list(MIX_MODES), "export_formats": list(FORMATS),
                "fit_modes": list(FIT_MODES),
                "video_extensions": sorted(files.VIDEO_EXTENSIONS), "max_upload_bytes": max_upload_bytes,
                "defaults": {k: getattr(values, k) for k in ("top_k", "mix", "fade_in", "fade_out", "loudness",
                                                               "snap", "export_format", "fit")}}

    @app.get("/api/tracks", tags=["library"], summary="The index's tracks (with beat grids on request)",
             dependencies=[Depends(need_token)])
    def tracks(path: Optional[list[str]] = Query(None, description="only these tracks (exact paths)"),
               beats: bool = Query(False, description="include each track's beat grid"),
               offset: int = Query(0, ge=0), limit: Optional[int] = Query(None, ge=1)) -> dict:
        return engine.tracks_json(path, beats, offset, limit)

    @app.get("/api/tracks/{track_id}", tags=["library"], summary="One track with its beat grid",
             dependencies=[Depends(need_token)])
    def one_track(track_id: int) -> dict:
        return engine.track_json(track_id)

    # -------------------------------------------------------- clips in

    async def save_stream(request: Request, name: str) -> Path:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_upload_bytes:
            raise files.UploadTooLarge(f"the upload is larger than the limit of {max_upload_bytes / 2**20:.0f} MiB")
        writer = files.UploadWriter(name, folders.uploads, max_upload_bytes)
        try:
            async for chunk in request.stream():
                writer.write(chunk)
        except BaseException:
            writer.abort()
            raise
        return await checked_upload(writer.finish())

    async def checked_upload(path: Path) -> Path:
        from mgsv_cli.media import ffmpeg as media

        try:
            info = await run_in_threadpool(media.probe, path)
            if not info.has_video:
                raise errors.MediaError("no video stream")
        except errors.MediaError as exc:
            path.unlink(missing_ok=True)
            raise files.UnsupportedUpload(f"{path.name}: not a readable video ({errors.first_line(exc)})") from None
        return path

    def upload_json(path: Path) -> dict:
        return {"video": str(path), "name": path.name, "size": path.stat().st_size,
                "url": "/files/uploads/" + files.url_path(path, folders.uploads)}

    @app.post("/api/upload", tags=["clips"], summary="Upload a clip (the request body is the file)",
              dependencies=[Depends(need_token)],
              openapi_extra={"requestBody": {"required": True, "content": {"application/octet-stream": {
                  "schema": {"type": "string", "format": "binary"}}}}})
    async def upload(request: Request, name: str = Query(..., description="the clip's file name (its extension counts)")
                     ) -> dict:
        return upload_json(await save_stream(request, name))

    @app.post("/api/suggest", tags=["clips"], dependencies=[Depends(need_token)],
              summary="Rank the tracks for a clip: what `mgsv suggest --json` prints",
              description=("JSON `{\"video\": PATH, \"top\": K, \"snap\": null|\"beat\"}`, or multipart with the clip "
                           "in `file` (and `top`, `snap` fields). Answers `SuggestionResult.to_json()` and remembers "
                           "it for render/export. With `options` (a CLI command's), 409 `options_differ` when the "
                           "server runs another index or model."),
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": {"$ref": "#/components/schemas/SuggestBody"}},
                  "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
                      "file": {"type": "string", "format": "binary"}, "top": {"type": "integer"},
                      "snap": {"type": "string", "enum": ["beat", "off"]}, "include_short": {"type": "boolean"}}}}}}})
    async def suggest(request: Request) -> dict:
        body = await suggest_body(request)
        from mgsv_cli import settings

        top = body.top if body.top is not None else settings.default("top_k")
        snap = None if body.snap in (None, "off") else body.snap
        if body.options is None and not Path(body.video).is_absolute():
            raise errors.UsageError(f"video {body.video!r}: give an absolute path (or upload the clip)")
        asked = body.options.model_dump() if body.options is not None else None
        fit = body.fit or settings.default("fit")
        result = await run_in_threadpool(engine.suggest, body.video, top, snap, body.remember, asked,
                                         body.include_short, fit)
        if body.exact:
            return {"result": result.to_json(), "exact": exact_suggestions(result)}
        return result.to_json()

    async def suggest_body(request: Request) -> SuggestBody:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        try:
            if kind == "multipart/form-data":
                length = request.headers.get("content-length")
                if length is None or not length.isdigit():
                    raise HTTPException(411, "a multipart upload needs a Content-Length")
                if int(length) > max_upload_bytes + (1 << 20):
                    raise files.UploadTooLarge(
                        f"the upload is larger than the limit of {max_upload_bytes / 2**20:.0f} MiB")
                form = await request.form(max_files=1, max_fields=8)
                upload_file = form.get("file")
                if upload_file is None or isinstance(upload_file, str):
                    raise errors.UsageError("multipart: put the clip in the field `file`")
                writer = files.UploadWriter(upload_file.filename or "clip", folders.uploads, max_upload_bytes)
                try:
                    while chunk := await upload_file.read(files.CHUNK):
                        writer.write(chunk)
                except BaseException:
                    writer.abort()
                    raise
                saved = await checked_upload(writer.finish())
                fields = {k: v for k, v in form.items()
                          if k in ("top", "snap", "include_short", "fit") and isinstance(v, str) and v}
                return SuggestBody.model_validate({"video": str(saved), **fields})
            return SuggestBody.model_validate(json.loads(await request.body() or b"null"))
        except json.JSONDecodeError as exc:
            raise errors.UsageError(f"bad request: not JSON ({exc.msg})") from None
        except ValueError as exc:  # pydantic's ValidationError
            if hasattr(exc, "errors"):
                raise RequestValidationError(exc.errors()) from None
            raise errors.UsageError(f"bad request: {errors.first_line(exc)}") from None

    # -------------------------------------------------------- render / export / preview

    def page_output(video: Path, name: str) -> Path | None:
        """Where the page's render/export of an uploaded clip goes (None: not an upload)."""
        try:
            real = files.contained(video, [folders.uploads])
        except files.NotServable:
            return None
        sub = files.relative_name(real.parent, folders.uploads)
        return folders.outputs / sub / name

    def download_url(path: Path) -> str | None:
        try:
            real = files.contained(path, [folders.outputs])
        except files.NotServable:
            return None
        return "/files/outputs/" + files.url_path(real, folders.outputs) + "?download=1"

    absolute_path = files.absolute_path

    def absolute(value: str | None, what: str) -> Path | None:
        return None if value is None else absolute_path(value, what)

    @app.post("/api/render", tags=["clips"], dependencies=[Depends(need_token)],
              summary="Put a track under a clip (what `mgsv render` does); a download URL for uploads")
    def render(body: RenderBody) -> dict:
        from mgsv_cli import settings
        from mgsv_cli.api import RenderRequest, render_clip
        from mgsv_cli.editor import render as rendering
        from mgsv_cli.editor.requests import json_field

        video = absolute_path(body.video, "video")
        request = RenderRequest.build(settings.load_settings(), json_field, pick=body.pick,
                                      track=absolute(body.track, "track"), start=body.start,
                                      out=absolute(body.out, "out"), mix=body.mix, fade_in=body.fade_in,
                                      fade_out=body.fade_out, loudness=body.loudness, snap=body.snap,
                                      index=absolute(body.index, "index") or engine.index_path, force=body.force,
                                      fit=body.fit, join=body.join)
        if request.out is None and (target := page_output(video, rendering.default_output_path(video).name)):
            # The page's renders go to the server's outputs, replaced on re-render, its tracks the index's.
            track = None if request.track is None else Path(engine.track(str(request.track)).path)
            request = dataclasses.replace(request, out=target, force=True, track=track)
        result = render_clip(video, request)
        exact = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(result).items()}
        return {"result": result.to_dict(), "exact": exact, "download_url": download_url(result.out_path)}

    @app.post("/api/export", tags=["clips"], dependencies=[Depends(need_token)],
              summary="Write a timeline of a remembered suggestion (what `mgsv export` does)")
    def export(body: ExportBody):
        from mgsv_cli import settings
        from mgsv_cli.api import ExportRequest, export_suggestion
        from mgsv_cli.editor import export as writers
        from mgsv_cli.editor.requests import json_field

        video, out = absolute_path(body.video, "video"), absolute(body.out, "out")
        request = ExportRequest.build(settings.load_settings(), json_field, pick=body.pick, fmt=body.format, out=out,
                                      frame_rate=body.frame_rate, snap=body.snap,
                                      index=absolute(body.index, "index") or engine.index_path, force=body.force,
                                      fit=body.fit, join=body.join)
        fmt, force = request.fmt, request.force
        if out is None:
            target = page_output(video, writers.default_output_path(video, fmt).name)
            if target is not None:
                out, force = target, True
        exported, record, snap_info = export_suggestion(video, request, start=body.start, out=out, force=force)
        written = exported.out
        entry = record.pick(body.pick)
        url = download_url(written)
        if body.download:
            if url is None:
                raise files.NotServable("only timelines of uploaded clips can be downloaded")
            return FileResponse(written, media_type="application/octet-stream",
                                headers={"content-disposition": files.content_disposition(written.name)})
        return {
            "ok": True, "out": str(written), "format": fmt, "video": record.video, "rank": body.pick,
            "track": entry.track, "start": round(entry.start, 6), "end": round(entry.end, 6),
            "snapped_to": snap_info.snapped_to if snap_info else None, "warnings": list(exported.warnings),
            "download_url": url,
            "record": record.to_json(), "entry_exact": dataclasses.asdict(entry),
            "snap": dataclasses.asdict(snap_info) if snap_info else None,
        }

    @app.get("/api/preview", tags=["clips"], dependencies=[Depends(need_token_or_query)],
             summary="The audio of a cut under an uploaded clip (made by ffmpeg, cached)",
             response_class=FileResponse)
    def preview(video: str = Query(..., description="the uploaded clip (absolute path, as /api/upload returns)"),
                rank: Optional[int] = Query(None, ge=1, description="a remembered suggestion's rank"),
                track: Optional[str] = Query(None, description="an indexed track (path or id) instead of a rank"),
                start: Optional[float] = Query(None, ge=0, description="seconds into the track (default: the cut's)"),
                mix: Optional[str] = Query(None, description="replace | original | duck (default: settings)"),
                format: Literal["wav", "m4a"] = Query("wav"),
                fit: Optional[Literal["cut", "ending", "loop"]] = Query(
                    None, description="cut | ending | loop (default: as suggested; with track, the settings')"),
                join: Optional[float] = Query(
                    None, ge=0, description="move the join to the bar line nearest this time (s)"),
                ) -> FileResponse:
        from mgsv_cli import settings
        from mgsv_cli.editor import fitting
        from mgsv_cli.editor.record import load_last_suggestion
        from mgsv_cli.serve.preview import make_preview

        clip = files.contained(video, [folders.uploads, folders.outputs])
        if (rank is None) == (track is None):
            raise errors.UsageError("give either rank or track")
        edit = None
        if rank is not None:
            record = load_last_suggestion(clip)
            entry = record.pick(rank)
            chosen = engine.track(entry.track)
            moved = start is not None and abs(start - entry.start) > 1e-6
            if start is not None and moved:
                entry = dataclasses.replace(entry, start=float(start), end=float(start) + record.duration,
                                            snapped_to=None)
            mode = fit or (entry.edit.requested if entry.edit is not None else "cut")
            if mode != "cut" and (moved or fit is not None or join is not None or entry.edit is None):
                entry = fitting.fit_entry(entry, mode, record.duration, index_path=engine.index_path, join_at=join)
            edit = entry.edit if mode != "cut" else None
            start = entry.start
        else:
            assert track is not None  # either rank or track, checked above
            chosen = engine.track(track)
            start = 0.0 if start is None else start
            mode = fit or settings.default("fit")
            if mode != "cut":
                from mgsv_cli.editor import render as rendering

                seconds = rendering.video_stream_seconds(clip) or 0.0
                structure, _ = fitting.structure_for_track(chosen.path, engine.index_path)
                edit = fitting.plan_edit(mode, structure, float(start), seconds, join_at=join)
                start = edit.start
        made = make_preview(clip, Path(chosen.path), float(start), mix=mix or settings.default("mix"),
                            fade_in=settings.default("fade_in"), fade_out=settings.default("fade_out"),
                            loudness=settings.default("loudness"), fmt=format, cache=folders.previews, edit=edit)
        headers = {"x-mgsv-start": f"{made.start:.6f}", "x-mgsv-mix": made.mix,
                   "cache-control": "private, max-age=3600"}
        if edit is not None:  # what the page draws on the strip: the spans and joins heard
            headers["x-mgsv-edit"] = json.dumps(edit.to_dict(), separators=(",", ":"))
        return FileResponse(made.path, media_type=made.media_type, headers=headers)

    @app.get("/api/structure", tags=["clips"], dependencies=[Depends(need_token)],
             summary="A track's bars, sections and ending (what --fit joins on), for the page's strip")
    def structure(track: str = Query(..., description="an indexed track (path or id)")) -> dict:
        from mgsv_cli.editor import fitting

        chosen = engine.track(track)
        found, source = fitting.structure_for_track(chosen.path, engine.index_path)
        data = found.to_dict()
        for key in ("chroma", "timbre", "loudness"):  # the page needs the grid, not the features
            data.pop(key)
        return {"track": chosen.path, "source": source, "last_downbeat": found.last_downbeat, **data}

    # -------------------------------------------------------- files

    def send(path: Path, download: bool) -> FileResponse:
        kind = "attachment" if download else "inline"
        return FileResponse(path, headers={"content-disposition": files.content_disposition(path.name, kind)})

    @app.get("/files/uploads/{name:path}", tags=["files"], dependencies=[Depends(need_token_or_query)],
             summary="An uploaded clip (for the page's <video>)")
    def uploaded(name: str, download: bool = False) -> FileResponse:
        return send(files.inside(folders.uploads, name), download)

    @app.get("/files/outputs/{name:path}", tags=["files"], dependencies=[Depends(need_token_or_query)],
             summary="A render or timeline the server wrote")
    def output(name: str, download: bool = False) -> FileResponse:
        return send(files.inside(folders.outputs, name), download)

    @app.get("/files/tracks/{track_id}", tags=["files"], dependencies=[Depends(need_token_or_query)],
             summary="An indexed track's audio file")
    def track_file(track_id: int, download: bool = False) -> FileResponse:
        return send(Path(engine.track(track_id).path), download)

    app.add_middleware(Guard, allowed=allowed_hosts(bind_host, port), port=port, instance=instance)
    return app
