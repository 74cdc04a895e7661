"""Reading video frames and audio samples with ffmpeg (from the ``imageio-ffmpeg`` wheel).

There is no ffprobe here: :func:`probe` reads what ``ffmpeg -i`` prints about its input
(the displayed frame size after the display matrix's rotation, the average and the nominal
frame rates, whether there is sound). Every ffmpeg call takes an argument list (never a
shell) and a failure becomes a :class:`~mgsv_cli.errors.MediaError` that names the file and
the last line ffmpeg had to say.

Every ffmpeg child dies with the process that started it: on Linux it asks the kernel for
SIGKILL when its parent goes (``PR_SET_PDEATHSIG``, see :func:`_die_with_parent`), so a
``kill -9`` of mgsv never leaves an ffmpeg writing on for seconds into a file nobody will
move into place. Other systems have no such request; there the render's clean-up of stale
temporaries (``editor/render.py``) waits until the file stops changing.
"""
from __future__ import annotations

import functools
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

from mgsv_cli.errors import MediaError, os_error_cause

# Lines ffmpeg prints around the real reason for a failure; they never explain anything.
_NOISE = (
    "at least one output file must be specified",
    "conversion failed",
    "error opening input file",
    "error opening input files",
    "error opening output file",
    "error opening output files",
    "exiting normally",
    "last message repeated",
    "terminating thread with return code",
    "task finished with error code",
    "nothing was written into output file",
    "error sending frames to consumers",  # the consequence of an error printed before it
    "error muxing a packet",
)

_CHANNELS_BY_LAYOUT = {
    "mono": 1, "stereo": 2, "downmix": 2, "2.1": 3, "3.0": 3, "3.0(back)": 3, "4.0": 4,
    "quad": 4, "quad(side)": 4, "3.1": 4, "5.0": 5, "5.0(side)": 5, "4.1": 5, "5.1": 6,
    "5.1(side)": 6, "6.0": 6, "6.0(front)": 6, "hexagonal": 6, "6.1": 7, "6.1(back)": 7,
    "6.1(front)": 7, "7.0": 7, "7.0(front)": 7, "7.1": 8, "7.1(wide)": 8, "7.1(wide-side)": 8,
    "octagonal": 8,
}
_TAG_KEYS = ("title", "artist", "album")


# The average and the nominal frame rate of a constant-rate video agree to ffmpeg's two
# printed decimals; a variable-rate one (a phone dropping frames in low light: "14.90 fps,
# 30 tbr") differs by far more than this fraction.
VFR_TOLERANCE = 0.01


@dataclass(frozen=True)
class MediaInfo:
    """What ``ffmpeg -i`` says about a file. Sizes are as displayed (rotation applied).

    ``fps`` is the first video stream's average frame rate (frames / duration; ffmpeg's
    ``fps``), ``nominal_fps`` the rate its timestamps are laid on (``r_frame_rate``,
    ffmpeg's ``tbr``); ``rotation`` the display rotation in degrees (0, 90, 180 or 270,
    counter-clockwise as the display matrix says), already applied to ``width``/``height``.
    """

    path: str
    duration: float
    has_video: bool
    has_audio: bool
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    sample_rate: int | None = None
    channels: int | None = None
    tags: dict[str, str] = field(default_factory=dict)
    nominal_fps: float | None = None
    rotation: int = 0

    @property
    def variable_frame_rate(self) -> bool:
        """Whether frames come at a varying rate: the average rate is not the nominal one.

        A nominal rate of exactly twice the average is an interlaced stream's field rate
        ("25 fps, 50 tbr" from MPEG-TS), not a variable rate: "exactly" as far as ffmpeg's
        two printed decimals tell (a phone's "14.90 fps, 30 tbr" is variable).
        """
        if not (self.fps and self.nominal_fps):
            return False
        if abs(self.nominal_fps - 2 * self.fps) <= 0.02:
            return False
        return abs(self.nominal_fps - self.fps) > VFR_TOLERANCE * self.nominal_fps


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary shipped with ``imageio-ffmpeg`` (``IMAGEIO_FFMPEG_EXE`` overrides)."""
    try:
        import imageio_ffmpeg
    except ImportError as exc:  # pragma: no cover - a hard dependency
        raise MediaError("ffmpeg is missing: install the imageio-ffmpeg package") from exc
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as exc:
        raise MediaError(f"ffmpeg is missing: {exc}") from exc


# Progress and summary lines ffmpeg (and its encoders, muxers and meters) print on the way,
# often after the real error: they must never be taken for the reason of a failure.
_STATISTICS = re.compile(
    r"^(frame|size|fps|time|bitrate|speed|elapsed|q|Lsize)=\s*\S"  # the progress line
    r"|^video:\s*\d|\bQavg:|^kb/s:|^(frame|mb) [IPB]\b|^(coded y,|ref [PB]|i16 v|i8 v|i4 v|i8c dc|8x8 transform"
    r"|direct mvs|Weighted P-Frames|consecutive B-frames)"  # x264's summary
    r"|^t:\s*[\d.]+\s+TARGET:|^Summary:|^(Integrated loudness|Loudness range|True peak|Threshold|LRA( low| high)?"
    r"|I|Peak):"  # ebur128's meter and summary
    r"|^Stream mapping:|^(Input|Output|Stream) #|^Press \[q\]",
    re.IGNORECASE,
)
# Words of a line that states what went wrong.
_ERROR_WORDS = re.compile(
    r"error|fail|cannot|can't|could not|unable|invalid|no such|not found|denied|not permitted|read-only"
    r"|no space|quota|too large|too long|does not|unknown|unsupported|not supported|unrecognized|impossible"
    r"|corrupt|missing|matches no|mismatch|incorrect",
    re.IGNORECASE,
)


def _storage_errnos() -> tuple[str, ...]:
    import errno

    names = ("ENOSPC", "EROFS", "EDQUOT", "EFBIG", "EIO", "EACCES", "EPERM", "ENAMETOOLONG")
    return tuple(os.strerror(getattr(errno, name)) for name in names if hasattr(errno, name))


# What ffmpeg prints for an OS error is the C library's strerror text ("No space left on
# device"): these words decide a failure whatever ffmpeg printed after them.
_STORAGE_CAUSE = re.compile("|".join(re.escape(text) for text in _storage_errnos()), re.IGNORECASE)


def _message_lines(stderr: str) -> list[str]:
    """The lines of ``stderr`` that may say why ffmpeg failed, without their ``[muxer @ 0x...]``
    tag: not wrap-up noise, and not indented (the dumps of inputs, outputs and their
    metadata, where a title may well contain the word "error")."""
    lines = []
    for line in stderr.splitlines():
        if line[:1].isspace():
            continue
        text = re.sub(r"^\[[^\]]*@ 0x[0-9a-fA-F]+\]\s*", "", line.strip())
        if text and not any(noise in text.lower() for noise in _NOISE):
            lines.append(text)
    return lines


def last_ffmpeg_message(stderr: str) -> str:
    """The line of ffmpeg's stderr that says why it failed.

    ffmpeg goes on printing statistics (``frame=``, ``video:...kB``, ``[aac] Qavg:``) and
    generic wrap-up lines after the real error, so the last line is rarely the reason. In
    order of preference: the last line naming an OS error (``No space left on device``,
    ``Read-only file system``, ...), the last line that reads like an error, the last line
    that is not a statistic.
    """
    lines = [line for line in _message_lines(stderr) if not _STATISTICS.search(line)]
    for wanted in (_STORAGE_CAUSE, _ERROR_WORDS):
        for line in reversed(lines):
            if wanted.search(line):
                return line
    return lines[-1] if lines else "ffmpeg failed without saying why"


def names_storage_error(message: str) -> bool:
    """Whether an ffmpeg message is an OS error of the place it writes to (disk full, read-only, ...)."""
    return bool(_STORAGE_CAUSE.search(message))


def _stopped_by_signal(returncode: int) -> str | None:
    """What a negative return code (ffmpeg killed by a signal) means, in words; None otherwise."""
    if returncode >= 0:
        return None
    import errno
    import signal

    number = -returncode
    if number == getattr(signal, "SIGXFSZ", None):
        return f"ffmpeg was stopped by SIGXFSZ: {os.strerror(errno.EFBIG)} (a file size limit, see `ulimit -f`)"
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    hint = " (out of memory?)" if name == "SIGKILL" else ""
    return f"ffmpeg was stopped by {name}{hint}"


def ffmpeg_failure(returncode: int, stderr: str) -> str:
    """Why ffmpeg failed: the signal that stopped it, else :func:`last_ffmpeg_message`."""
    return _stopped_by_signal(returncode) or last_ffmpeg_message(stderr)


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


@functools.lru_cache(maxsize=1)
def _prctl():
    """libc's ``prctl``, looked up once in the parent (None off Linux or without it)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


def _die_with_parent():
    """A ``preexec_fn`` making the child get SIGKILL when this process dies; None where
    the OS cannot (only Linux has ``PR_SET_PDEATHSIG``).

    The signal comes when the *thread* that started the child ends; every ffmpeg here is
    waited for by the thread that started it, so that is never before the work is done.
    A parent that died between ``fork`` and ``prctl`` would send no signal: the child
    checks that its parent is still the one that started it, and kills itself otherwise.
    The function runs between fork and exec and does only that system call (no imports,
    no locks), which is what makes a ``preexec_fn`` safe with other threads running.
    """
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()

    def in_child() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)

    return in_child


def ffmpeg_child_options() -> dict:
    """Keyword arguments for ``subprocess.run``/``Popen`` of every ffmpeg mgsv starts.

    The child dies with mgsv (:func:`_die_with_parent`), and Python's ignored SIGXFSZ is
    kept (``restore_signals=False``), which turns a file size limit into an EFBIG error
    ffmpeg reports instead of a silent death by signal (its pipes are read to the end, so
    an ignored SIGPIPE changes nothing).
    """
    options: dict = {"restore_signals": False}
    in_child = _die_with_parent()
    if in_child is not None:
        options["preexec_fn"] = in_child
    return options


def run_ffmpeg(args: Sequence[str | os.PathLike[str]], what: str, *, check: bool = True,
               input: bytes | None = None) -> subprocess.CompletedProcess:
    """Run ``ffmpeg -hide_banner -nostdin ARGS`` capturing stdout (bytes) and stderr.

    ``what`` says what was being done ("decoding audio of x.mp3"); on a non-zero exit
    (when ``check``) a MediaError "WHAT: <ffmpeg's last meaningful line>" is raised.
    ``input``: bytes for ffmpeg's stdin (then ``-nostdin`` is left out).
    """
    cmd = [ffmpeg_exe(), "-hide_banner", *([] if input is not None else ["-nostdin"]), *[str(a) for a in args]]
    try:
        proc = subprocess.run(cmd, input=input, capture_output=True, check=False, **ffmpeg_child_options())
    except OSError as exc:
        raise MediaError(f"{what}: cannot start ffmpeg ({exc})") from exc
    if check and proc.returncode != 0:
        raise MediaError(f"{what}: {ffmpeg_failure(proc.returncode, _text(proc.stderr))}")
    return proc


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode("utf-8", errors="replace")


def _lacks_stream(stderr: str) -> bool:
    """True when ffmpeg failed because the input has no stream of the mapped kind."""
    return "matches no streams" in stderr or "does not contain any stream" in stderr


def _check_input_file(path: str | os.PathLike) -> Path:
    """Fail early, with a plain message, on files ffmpeg would reject obscurely."""
    file = Path(path)
    try:
        if not file.exists():
            raise MediaError(f"{file}: no such file")
        if file.is_dir():
            raise MediaError(f"{file}: is a folder, not a media file")
        if file.stat().st_size == 0:
            raise MediaError(f"{file}: file is empty (0 bytes)")
    except OSError as exc:  # a name too long, an unreadable folder, a failing disk
        raise MediaError(f"{file}: {os_error_cause(exc)}") from None
    return file


# ---------------------------------------------------------------- probing


def probe(path: str | os.PathLike) -> MediaInfo:
    """Describe a media file: duration (s), streams, display size, fps, audio format, tags.

    When the container has no duration (raw or streamed formats), the file is decoded
    once to find it. Raises MediaError for a missing, empty or non-media file.
    """
    file = _check_input_file(path)
    proc = run_ffmpeg(["-i", file], f"reading {file}", check=False)
    stderr = _text(proc.stderr)
    if "Input #0" not in stderr:
        raise MediaError(f"{file}: not a readable media file ({last_ffmpeg_message(stderr)})")
    info = parse_ffmpeg_input_info(stderr, str(file))
    if not (info.has_video or info.has_audio):
        raise MediaError(f"{file}: contains neither video nor audio")
    if info.duration <= 0:
        info = replace(info, duration=_decoded_duration(file))
    if info.duration <= 0:
        raise MediaError(f"{file}: has zero length")
    return info


def _decoded_duration(file: Path) -> float:
    """Duration found by decoding the whole file to nothing (for containers that do not say)."""
    proc = run_ffmpeg(["-i", file, "-nostats", "-progress", "pipe:1", "-f", "null", "-"],
                      f"measuring the length of {file}", check=False)
    times = re.findall(r"out_time_us=(\d+)", _text(proc.stdout))
    return int(times[-1]) / 1e6 if times else 0.0


def parse_ffmpeg_input_info(stderr: str, path: str = "") -> MediaInfo:
    """Parse the ``Input #0`` block ffmpeg prints to stderr into a MediaInfo (no validation).

    Duration is 0.0 when ffmpeg prints ``Duration: N/A``.
    """
    duration = _parse_duration(stderr)
    video = audio = None
    rotation = 0.0
    container_tags: dict[str, str] = {}
    audio_tags: dict[str, str] = {}
    section: dict[str, str] | None = None
    section_indent = 0
    current_stream = ""
    for line in stderr.splitlines():
        indent = len(line) - len(line.lstrip())
        text = line.strip()
        if section is not None and indent > section_indent and ":" in text:
            key, _, value = text.partition(":")
            key = key.strip().lower()
            if key in _TAG_KEYS and key not in section:
                section[key] = value.strip()
            continue
        section = None
        if text.startswith("Stream #0:"):
            current_stream = text
            kind = _stream_kind(text)
            if kind == "video" and video is None:
                video = text
            elif kind == "audio" and audio is None:
                audio = text
        elif text == "Metadata:":
            section_indent = indent
            if indent <= 2:
                section = container_tags
            elif current_stream and current_stream == audio:
                section = audio_tags
        elif current_stream == video and video is not None:
            # "Display Matrix: rotation of -90.00 degrees" (side data), or before ffmpeg 5 the
            # stream tag "rotate : 90", which turns the other way.
            match = re.search(r"rotation of (-?[\d.]+) degrees", text, re.IGNORECASE)
            tag = re.match(r"rotate\s*:\s*(-?[\d.]+)$", text, re.IGNORECASE)
            if match:
                rotation = float(match.group(1))
            elif tag and rotation == 0.0:
                rotation = -float(tag.group(1))
    tags = {**audio_tags, **container_tags}
    width, height, fps, nominal_fps = _parse_video_stream(video)
    quarter_turns = round(rotation / 90) % 4
    if width and height and quarter_turns % 2:
        width, height = height, width
    sample_rate, channels = _parse_audio_stream(audio)
    return MediaInfo(
        path=path, duration=duration, has_video=video is not None, has_audio=audio is not None,
        width=width, height=height, fps=fps, sample_rate=sample_rate, channels=channels, tags=tags,
        nominal_fps=nominal_fps, rotation=90 * quarter_turns,
    )


def _parse_duration(stderr: str) -> float:
    match = re.search(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)", stderr)
    if not match:
        return 0.0
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _stream_kind(line: str) -> str:
    """``video`` (cover art excluded), ``audio`` or ``other`` for a ``Stream #0:N`` line."""
    if ": Video:" in line and "(attached pic)" not in line:
        return "video"
    if ": Audio:" in line:
        return "audio"
    return "other"


def _parse_video_stream(line: str | None) -> tuple[int | None, int | None, float | None, float | None]:
    """``(width, height, fps, nominal_fps)`` of a ``Stream #0:N: Video:`` line, as stored.

    ``fps`` is the average rate ("14.90 fps"), else the nominal one; ``nominal_fps`` the
    nominal rate ("30 tbr"), else the average one.
    """
    if line is None:
        return None, None, None, None
    size = re.search(r",\s*(\d+)x(\d+)\b", line)
    average, nominal = _rate(line, "fps"), _rate(line, "tbr")
    fps, nominal_fps = average or nominal, nominal or average
    if size:
        return int(size.group(1)), int(size.group(2)), fps, nominal_fps
    return None, None, fps, nominal_fps


def _rate(line: str, unit: str) -> float | None:
    """The number before ``unit`` ("29.97 fps", "1k tbr") in a stream line, None if absent."""
    match = re.search(rf"([\d.]+)(k?) {unit}\b", line)
    if not match:
        return None
    value = float(match.group(1)) * (1000 if match.group(2) else 1)
    return value if value > 0 else None


def _parse_audio_stream(line: str | None) -> tuple[int | None, int | None]:
    if line is None:
        return None, None
    match = re.search(r"(\d+) Hz,\s*([^,]+)", line)
    if not match:
        return None, None
    layout = match.group(2).strip()
    counted = re.match(r"(\d+) channels", layout)
    channels = int(counted.group(1)) if counted else _CHANNELS_BY_LAYOUT.get(layout)
    if channels is None:
        channels = _CHANNELS_BY_LAYOUT.get(layout.split("(")[0])
    return int(match.group(1)), channels


# ---------------------------------------------------------------- video frames


def frames_for_duration(duration: float, max_frames: int | None = None) -> int:
    """Frames sampled at 1 fps from t = 0: floor(duration) + 1, at most ``max_frames`` (None: no cap)."""
    if duration <= 0:
        return 0
    every_second = int(math.floor(duration + 1e-6)) + 1
    return every_second if max_frames is None else min(every_second, max_frames)


def shortest_side_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) after scaling the shorter side to ``short_side``, as torchvision's
    ``Resize(int)`` computes it (the longer side is truncated, not rounded)."""
    if width <= height:
        return short_side, int(short_side * height / width)
    return int(short_side * width / height), short_side


def read_frames_1fps(path: str | os.PathLike, max_frames: int | None = None,
                     short_side: int | None = None):
    """Decode the frames shown at t = 0, 1, 2, ... s (at most ``max_frames``) in one ffmpeg run.

    Frame i is the last frame whose timestamp is <= i s (ffmpeg's fps filter with upward
    rounding); at t = duration the last frame is still shown, so a video of exactly N s
    gives N + 1 frames, like the recipe's i = 0..floor(duration).

    ``short_side``: when given, each frame is resized as it arrives (PIL bicubic, the same
    operation and size as CLIP's ``Resize``), which keeps memory small for large videos.

    Returns ``(frames uint8 [F, H, W, 3] RGB, duration seconds)``.
    """
    import numpy as np

    frames: list = []
    duration = _decode_frames_1fps(path, max_frames, short_side, frames.append)
    return np.stack(frames), duration


def _decode_frames_1fps(path, max_frames: int | None, short_side: int | None,
                        sink: Callable) -> float:
    """Stream 1-fps frames into ``sink`` (as uint8 HxWx3 arrays); returns the duration."""
    file = _check_input_file(path)
    # tpad clones the last frame for 1 s so that t = floor(duration) exists even when the
    # video ends exactly on a whole second; the extra frame it may add is trimmed below.
    chain = "tpad=stop_mode=clone:stop_duration=1,fps=fps=1:round=up:start_time=0"
    limit = [] if max_frames is None else ["-frames:v", str(max_frames + 1)]
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(file), "-map", "0:V:0",
           "-an", "-sn", "-dn", "-vf", chain, *limit, "-f", "image2pipe", "-c:v", "ppm", "-"]
    frames = []
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, **ffmpeg_child_options())
        except OSError as exc:
            raise MediaError(f"decoding frames of {file}: cannot start ffmpeg ({exc})") from exc
        assert proc.stdout is not None  # stdout=PIPE
        try:
            for frame in _iter_ppm(proc.stdout):
                frames.append(_resize_short_side(frame, short_side) if short_side else frame)
        finally:
            proc.stdout.close()
            returncode = proc.wait()
        err.seek(0)
        stderr = _text(err.read())
    if returncode != 0 and not frames:
        message = "no video stream" if _lacks_stream(stderr) else last_ffmpeg_message(stderr)
        raise MediaError(f"decoding frames of {file}: {message}")
    if not frames:
        raise MediaError(f"decoding frames of {file}: no video frame could be decoded")
    duration = _parse_duration(stderr) or probe(file).duration
    for frame in frames[: frames_for_duration(duration, max_frames)]:
        sink(frame)
    return duration


def _iter_ppm(stream) -> Iterator:
    """Binary PPM (P6) images one after another, as ffmpeg's image2pipe writes them."""
    import numpy as np

    while True:
        magic = stream.readline()
        if not magic:
            return
        if magic.strip() != b"P6":
            raise MediaError(f"unexpected frame data from ffmpeg: {magic[:20]!r}")
        width, height = (int(v) for v in stream.readline().split())
        stream.readline()  # maxval, always 255 for rgb24
        n_bytes = width * height * 3
        data = stream.read(n_bytes)
        if len(data) != n_bytes:
            return
        yield np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3)


def _resize_short_side(frame, short_side: int):
    import numpy as np
    from PIL import Image

    height, width = frame.shape[:2]
    size = shortest_side_size(width, height, short_side)
    if size == (width, height):
        return frame
    return np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BICUBIC))


# ---------------------------------------------------------------- audio


def read_audio_mono(path: str | os.PathLike, max_seconds: float | None = None, *, sample_rate: int):
    """Decode the FIRST channel of the first audio stream, resampled to ``sample_rate`` Hz (soxr).

    Only channel 0 is kept (not a downmix), as the reference filterbank reads it.
    ``max_seconds`` stops decoding early. Returns float32 samples in [-1, 1], shape [n].
    """
    import numpy as np

    file = _check_input_file(path)
    args: list[str | os.PathLike[str]] = ["-i", file]
    if max_seconds is not None:
        args += ["-t", f"{max_seconds:.6f}"]
    args += ["-map", "0:a:0", "-vn", "-sn", "-dn",
             "-af", f"pan=mono|c0=c0,aresample={int(sample_rate)}:resampler=soxr",
             "-c:a", "pcm_f32le", "-f", "f32le", "-"]
    proc = run_ffmpeg(args, f"decoding audio of {file}", check=False)
    if proc.returncode != 0:
        stderr = _text(proc.stderr)
        message = "no audio stream" if _lacks_stream(stderr) else last_ffmpeg_message(stderr)
        raise MediaError(f"decoding audio of {file}: {message}")
    samples = np.frombuffer(proc.stdout, dtype="<f4").astype(np.float32, copy=True)
    if samples.size == 0:
        raise MediaError(f"decoding audio of {file}: no audio samples could be decoded")
    return samples
