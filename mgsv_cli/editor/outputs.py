"""Where the editor's outputs go by default: ``clip.mp4`` -> ``clip.mgsv.<ext>`` beside it;
and the editor's inputs: folders expanded into videos, a single video checked first.

The one owner of the ``.mgsv.`` tag: render and export name their outputs with it, and
folder inputs skip files that carry it (a rendered video is not a new clip).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from mgsv_cli.media.files import VIDEO_EXTENSIONS

OUTPUT_TAG = ".mgsv"


def beside(video: str | os.PathLike, suffix: str) -> Path:
    """``clip.mov`` + ``.fcpxml`` -> ``clip.mgsv.fcpxml`` in the video's folder."""
    video = Path(video)
    return video.with_name(f"{video.stem}{OUTPUT_TAG}{suffix}")


def check_output_name(out: Path) -> None:
    """A ``StorageError`` now, before any work, for an output name the file system cannot
    hold (longer than its NAME_MAX), instead of an ``os.replace`` failing at the very end."""
    import errno

    from mgsv_cli.errors import storage_error

    folder = out.parent
    try:
        while not folder.is_dir() and folder != folder.parent:  # pathconf needs a folder that exists
            folder = folder.parent
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # no pathconf (Windows) or no answer
        limit = 255
    if len(os.fsencode(out.name)) > limit:
        raise storage_error("write", out, OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG)))


def check_video_input(video: str | os.PathLike) -> Path:
    """The video a command works on, checked before anything else is read or loaded: a
    ``MediaError`` "no such file: X" or a ``UsageError`` "X is a folder: give a video file"
    says what is wrong with the argument itself, instead of a later step (no remembered
    suggestion, ffmpeg) failing for a reason that is not the real one."""
    from mgsv_cli.errors import MediaError, UsageError, os_error_cause

    path = Path(video).expanduser()
    try:
        if path.is_dir():
            raise UsageError(f"{path} is a folder: give a video file")
        if not path.exists():
            raise MediaError(f"no such file: {path}")
    except OSError as exc:  # a name too long, an unreadable folder on the way
        raise MediaError(f"{path}: {os_error_cause(exc)}") from None
    return path


def is_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder; False when the OS cannot say (the error comes when it is read)."""
    try:
        return Path(path).is_dir()
    except OSError:
        return False


def single_clip(videos) -> bool:
    """One clip named (not a folder): its failure is the command's error, not one line of a batch."""
    return len(videos) == 1 and not is_folder(videos[0])


def is_mgsv_output(path: str | os.PathLike) -> bool:
    """Whether a file name is one mgsv writes (``<stem>.mgsv.<ext>``)."""
    return OUTPUT_TAG + "." in Path(path).name


def expand_video_inputs(inputs: Iterable[str | os.PathLike]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Videos named or found (recursively, by extension) in folders; plus ``(input, reason)`` for bad ones."""
    videos: list[Path] = []
    problems: list[tuple[str, str]] = []
    for item in inputs:
        path = Path(item).expanduser()
        try:
            path.is_file()  # a name too long, an unreadable folder: said per input, not raised
        except OSError as exc:
            from mgsv_cli.errors import os_error_cause

            problems.append((str(path), os_error_cause(exc)))
            continue
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
                and not is_mgsv_output(p)  # mgsv render's own outputs sit beside the clips
            )
            if not found:
                problems.append((str(path), f"no video files ({', '.join(sorted(VIDEO_EXTENSIONS))}) in this folder"))
            videos.extend(found)
        elif path.is_file():
            videos.append(path)
        else:
            problems.append((str(path), "no such file or folder"))
    unique = list(dict.fromkeys(p.resolve() for p in videos))
    return unique, problems
