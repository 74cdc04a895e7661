"""Which files the server may hand out, and where uploads and outputs go.

Only three kinds of file are ever served: the index's tracks, uploaded clips and what
the server wrote (renders, timelines). Every request names a file relative to one of
the server's folders, or an indexed track; a name is refused unless its real path (all
symlinks followed) is a regular file inside that folder, or exactly an indexed track.
``..``, absolute paths, hidden names, backslashes and NULs are refused before any look
at the disk.

An upload keeps its name (:func:`safe_stem`): letters, marks and digits of every script
(NFC, so a name typed on macOS is the same file), spaces and ordinary punctuation stay;
only what is unsafe somewhere the name goes is dropped: path separators, control, format
(bidi overrides) and unassigned characters, the characters Windows forbids, leading dots
(hidden files). Renders and timelines of an upload are named after it, and a download's
``Content-Disposition`` carries the name UTF-8 encoded (RFC 5987/6266
``filename*=UTF-8''...``, with an ASCII ``filename`` for old clients); URLs quote it.
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
import unicodedata
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from mgsv_cli import paths
from mgsv_cli.errors import MgsvError
from mgsv_cli.media.files import VIDEO_EXTENSIONS

DEFAULT_MAX_UPLOAD_BYTES = 2 * 1024 ** 3  # 2 GiB: minutes of 4K phone video
CHUNK = 1 << 20
# A stem's UTF-8 bytes: with ".mgsv.fcpxml" and a temporary file's prefix and suffix it stays
# far below the 255 bytes most file systems allow in a name (4 bytes a character in some scripts).
MAX_STEM_BYTES = 120
# What no name keeps: Windows' reserved characters (separators among them), whatever the OS.
_UNSAFE = set('<>:"/\\|?*')
# Unicode categories dropped: control, format (bidi overrides that disguise an extension),
# surrogate, private-use, unassigned, line and paragraph separators.
_UNSAFE_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}
_JOINERS = {"\u200c", "\u200d"}  # format characters that spell words in Persian, Indic scripts, emoji


class NotServable(MgsvError):
    """A file that is not one the server hands out (outside its folders, not indexed, missing)."""

    exit_code = 2


class UploadTooLarge(MgsvError):
    exit_code = 2


class UnsupportedUpload(MgsvError):
    exit_code = 2


@dataclass(frozen=True)
class Folders:
    """The server's own folders: uploaded clips, rendered outputs, cached previews."""

    uploads: Path
    outputs: Path
    previews: Path

    @classmethod
    def default(cls) -> "Folders":
        base = paths.data_dir() / "serve"
        return cls(uploads=base / "uploads", outputs=base / "outputs",
                   previews=paths.cache_dir() / "serve" / "previews")

    def create(self) -> "Folders":
        for folder in (self.uploads, self.outputs, self.previews):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self


_SAFE_PART = re.compile(r"^[^/\\\x00]+$")


def check_relative_name(name: str) -> list[str]:
    """The parts of a relative name that may be looked up, or NotServable."""
    if not name or "\x00" in name or "\\" in name or name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise NotServable("not a file this server hands out")
    parts = name.split("/")
    for part in parts:
        if not _SAFE_PART.match(part) or part in (".", "..") or part.startswith("."):
            raise NotServable("not a file this server hands out")
    return parts


def inside(root: Path, name: str) -> Path:
    """The regular file ``root/name`` whose real path lies inside ``root``'s real path."""
    parts = check_relative_name(name)
    real_root = root.resolve()
    try:
        target = real_root.joinpath(*parts).resolve(strict=True)
    except (OSError, RuntimeError):
        raise NotServable("no such file") from None
    if not target.is_relative_to(real_root) or not target.is_file():
        raise NotServable("not a file this server hands out")
    return target


def contained(path: str | os.PathLike, roots: Iterable[Path]) -> Path:
    """An absolute ``path`` (as the API returns them) that really lies inside one of ``roots``."""
    text = str(path)
    if not text or "\x00" in text:
        raise NotServable("not a file this server hands out")
    candidate = Path(text)
    if not candidate.is_absolute():
        raise NotServable("not a file this server hands out")
    try:
        real = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        raise NotServable("no such file") from None
    for root in roots:
        real_root = root.resolve()
        if real.is_relative_to(real_root) and real.is_file():
            return real
    raise NotServable("not a file this server hands out")


def relative_name(path: Path, root: Path) -> str:
    """``path``'s name under ``root``, with forward slashes (:func:`url_path` for a URL)."""
    return path.resolve().relative_to(root.resolve()).as_posix()


def url_path(path: Path, root: Path) -> str:
    """``path``'s name under ``root``, percent-encoded for a URL path (``#``, ``%``, spaces, any script)."""
    return urllib.parse.quote(relative_name(path, root), safe="/")


def safe_stem(name: str) -> str:
    """The stem of an uploaded file's name as it will be stored (see the module's docstring):
    ``Café – été.mp4`` stays ``Café – été``; ``../x.mp4`` is ``x``; nothing usable left: ``clip``."""
    base = unicodedata.normalize("NFC", name).replace("\\", "/").split("/")[-1]
    stem = Path(base).stem if Path(base).suffix else base
    kept = "".join(" " if c.isspace() else c for c in stem  # tabs, newlines, no-break spaces: a space
                   if c.isspace() or c in _JOINERS
                   or (c not in _UNSAFE and unicodedata.category(c) not in _UNSAFE_CATEGORIES))
    kept = re.sub(r" {2,}", " ", kept).strip(" .").lstrip("-")
    while len(kept.encode("utf-8")) > MAX_STEM_BYTES:
        kept = kept[:-1]
    return kept.rstrip(" .") or "clip"


def content_disposition(name: str, kind: str = "attachment") -> str:
    """A ``Content-Disposition`` value that gives a browser ``name`` in any script: RFC 6266's
    ``filename*=UTF-8''<percent-encoded>``, after a plain ASCII ``filename`` for clients without it."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    ascii_name = re.sub(r'[^A-Za-z0-9 ._()\[\]+,&!=~@-]+', "_", ascii_name)
    ascii_name = re.sub(r" {2,}", " ", ascii_name).strip(" ._") or "download"
    if ascii_name == name:
        return f'{kind}; filename="{name}"'
    return f"""{kind}; filename="{ascii_name}"; filename*=UTF-8''{urllib.parse.quote(name, safe='')}"""


def upload_extension(name: str) -> str:
    """The lower-case video extension of an uploaded file's name, or UnsupportedUpload."""
    suffix = Path(name.replace("\\", "/").split("/")[-1]).suffix.lower()
    if suffix not in VIDEO_EXTENSIONS:
        raise UnsupportedUpload(
            f"{name!r}: not a video file; expected one of {', '.join(sorted(VIDEO_EXTENSIONS))}")
    return suffix


class UploadWriter:
    """Writes one uploaded clip under ``uploads/<content hash>/<safe name>`` as its bytes arrive.

    ``write`` each chunk, then ``finish`` (the stored path) or ``abort``. The same content
    uploaded again lands on the same file, so a remembered suggestion stays valid. Raises
    UnsupportedUpload for a name without a video extension or an empty upload, and
    UploadTooLarge past ``max_bytes`` (nothing is kept then).
    """

    def __init__(self, name: str, uploads: Path, max_bytes: int):
        self.name = name
        self.suffix = upload_extension(name)
        self.uploads = uploads
        self.max_bytes = max_bytes
        self.size = 0
        self._digest = hashlib.blake2b(digest_size=12)
        uploads.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp_name = tempfile.mkstemp(dir=uploads, prefix=".upload.", suffix=".part")
        self._tmp = Path(tmp_name)
        self._handle = os.fdopen(fd, "wb")

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            self.abort()
            raise UploadTooLarge(f"the upload is larger than the limit of {self.max_bytes / 2**20:.0f} MiB")
        self._digest.update(chunk)
        self._handle.write(chunk)

    def finish(self) -> Path:
        try:
            self._handle.close()
            if self.size == 0:
                raise UnsupportedUpload(f"{self.name!r}: the file is empty")
            folder = self.uploads / self._digest.hexdigest()
            folder.mkdir(exist_ok=True, mode=0o700)
            target = folder / f"{safe_stem(self.name)}{self.suffix}"
            if target.is_file() and target.stat().st_size == self.size:
                return target  # the same clip again: keep the file (and its mtime)
            os.replace(self._tmp, target)
            return target
        finally:
            self.abort()

    def abort(self) -> None:
        if not self._handle.closed:
            self._handle.close()
        paths.remove_quietly(self._tmp)


__all__ = ["Folders", "NotServable", "UploadTooLarge", "UnsupportedUpload", "UploadWriter", "inside", "contained",
           "relative_name", "url_path", "safe_stem", "content_disposition", "upload_extension"]
