"""The frozen encoders' pretrained weights: where they are, how to fetch them, whether they are here.

They need the network once; afterwards everything runs offline. Without a connection
(or with ``HF_HUB_OFFLINE=1``) each function raises a one-line error saying what to
fetch by hand and where to put it, never a traceback.

Weights land where the finders at the end of this module look for them: ``WEIGHTS/clip-vit-b-32-openai/``
(open_clip's OpenAI ViT-B/32 checkpoint) and ``WEIGHTS/ast-finetuned-audioset-10-10-0.4593/``
(a ``save_pretrained`` folder), ``WEIGHTS`` being ``--weights-dir`` or mgsv's data folder.
No trained MaDe checkpoint is published; ``mgsv train`` makes one.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mgsv_cli.errors import WeightsMissingError, first_line

CLIP_MODEL_NAME = "ViT-B-32"
CLIP_PRETRAINED_TAG = "openai"
CLIP_HUB_REPO = "timm/vit_base_patch32_clip_224.openai"  # where open_clip fetches "openai" from
CLIP_HUB_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
AST_HUB_REPO = "MIT/ast-finetuned-audioset-10-10-0.4593"
CLIP_WEIGHTS_SUBDIR = "clip-vit-b-32-openai"
AST_WEIGHTS_SUBDIR = "ast-finetuned-audioset-10-10-0.4593"
AST_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class WeightsStatus:
    """Whether one pretrained component is available locally, and where."""

    name: str
    present: bool
    location: str | None  # file or folder found, None when absent
    source: str  # "environment", "weights dir", "hub cache", or "missing"
    detail: str = ""


# ---------------------------------------------------------------- errors


def offline_env() -> bool:
    """Whether HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE ask for no network."""
    flag = os.environ.get("HF_HUB_OFFLINE", "") or os.environ.get("TRANSFORMERS_OFFLINE", "")
    return flag.strip().lower() in ("1", "true", "yes", "on")


def hub_failure_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the hub could not be reached or refused" (no traceback for them)."""
    import huggingface_hub.errors as hf_errors

    kinds: list[type[BaseException]] = [OSError, ValueError, hf_errors.HfHubHTTPError,
                                        hf_errors.LocalEntryNotFoundError]
    for name in ("OfflineModeIsEnabled", "RepositoryNotFoundError", "GatedRepoError"):
        kind = getattr(hf_errors, name, None)
        if isinstance(kind, type):
            kinds.append(kind)
    try:
        import httpx

        kinds.append(httpx.HTTPError)
    except ImportError:
        pass
    try:
        import requests

        kinds.append(requests.RequestException)
    except ImportError:
        pass
    return tuple(kinds)


def hub_failure_reason(exc: BaseException | None) -> str:
    """A short cause for a failed hub call (the library's own messages run to paragraphs)."""
    import huggingface_hub.errors as hf_errors

    if exc is None:
        return "no file"
    if offline_env() or isinstance(exc, hf_errors.OfflineModeIsEnabled):
        return "offline mode is on (HF_HUB_OFFLINE=1)"
    if isinstance(exc, hf_errors.GatedRepoError):
        return "the repository is gated: accept its terms on huggingface.co and pass a token"
    if isinstance(exc, hf_errors.RepositoryNotFoundError):
        return "repository not found (or private: pass a token)"
    if isinstance(exc, hf_errors.LocalEntryNotFoundError):
        return "no connection to huggingface.co"
    return first_line(exc, 160)


HUB_PROBE_TIMEOUT = 5.0  # seconds: a reachable hub answers in well under that; the client's own retries take ~30 s


def hub_endpoint() -> str:
    """The hub's address as the environment says now (``HF_ENDPOINT``, else huggingface.co)."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def hub_unreachable_reason(timeout: float = HUB_PROBE_TIMEOUT) -> str | None:
    """Why the hub cannot be reached right now (no name, refused, timed out), or None when it answers.

    One request, no retries: the hub client retries a failed connection five times with
    back-off (about 30 s of "Retrying in 8s" lines) before loading gives up, so a missing
    weights file is decided with this probe first. Any HTTP answer, even an error status,
    means the hub is there. Proxies from the environment are honoured, as the client does.
    """
    import urllib.error
    import urllib.request

    if offline_env():
        return "offline mode is on (HF_HUB_OFFLINE=1)"
    url = f"{hub_endpoint()}/api/models/{AST_HUB_REPO}"
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        cause = getattr(exc, "reason", exc)
        return f"cannot reach {hub_endpoint()}: {first_line(cause, 120)}"
    return None


@contextmanager
def quiet_hub():
    """Silence the hub client's retry warnings for the duration: failures are reported once, by us."""
    import logging

    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


# ---------------------------------------------------------------- encoder weights


def _weights_root(weights_dir: str | os.PathLike | None) -> Path:
    return Path(weights_dir).expanduser() if weights_dir is not None else default_weights_dir()


def download_models(weights_dir: str | os.PathLike | None = None, token: str | None = None) -> list[Path]:
    """Fetch the frozen encoders' weights so that later runs work offline; returns what was written.

    CLIP ViT-B/32 (OpenAI weights, from open_clip's hub repository) goes to
    ``WEIGHTS/clip-vit-b-32-openai/`` and AST (AudioSet 0.4593) to
    ``WEIGHTS/ast-finetuned-audioset-10-10-0.4593/``, where ``WEIGHTS`` is ``weights_dir``
    or mgsv's default weights folder (both are searched by ``mgsv index/suggest``).
    Raises WeightsMissingError when the hub cannot be reached.
    """
    root = _weights_root(weights_dir)
    unreachable = hub_unreachable_reason()
    if unreachable is not None:
        raise WeightsMissingError(f"cannot download the encoder weights ({unreachable}): "
                                  f"{_manual_hint(root)}")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WeightsMissingError(f"cannot create the weights folder {root}: {exc.strerror or exc}") from None
    clip = _download_clip(root / CLIP_WEIGHTS_SUBDIR, token)
    ast = _download_ast(root / AST_WEIGHTS_SUBDIR, token)
    return [clip, ast]


def _manual_hint(root: Path) -> str:
    return (f"download them on a connected machine with `mgsv models download --weights-dir DIR` and copy DIR "
            f"here, or set MGSV_CLIP_WEIGHTS to an open_clip ViT-B-32 OpenAI checkpoint file and MGSV_AST_WEIGHTS "
            f"to a folder with {AST_HUB_REPO}'s config.json and weights (default place: {root})")


def _download_clip(folder: Path, token: str | None) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    last: BaseException | None = None
    for filename in CLIP_HUB_FILES:  # safetensors first, the pickle only if it is all there is
        try:
            with quiet_hub():
                return Path(hf_hub_download(repo_id=CLIP_HUB_REPO, filename=filename,
                                            local_dir=str(folder), token=token))
        except RemoteEntryNotFoundError as exc:
            last = exc
        except hub_failure_types() as exc:
            last = exc
            break  # no connection: the next file would fail the same way, slowly
    raise WeightsMissingError(
        f"cannot fetch CLIP {CLIP_MODEL_NAME} '{CLIP_PRETRAINED_TAG}' from the Hugging Face hub "
        f"({hub_failure_reason(last)}): {_manual_hint(folder.parent)}"
    )


def _download_ast(folder: Path, token: str | None) -> Path:
    from huggingface_hub import snapshot_download

    try:
        with quiet_hub():
            snapshot_download(repo_id=AST_HUB_REPO, local_dir=str(folder), token=token,
                              allow_patterns=["*.json", "*.safetensors"])
            if not any(folder.glob("*.safetensors")):  # older repositories hold only a pickle
                snapshot_download(repo_id=AST_HUB_REPO, local_dir=str(folder), token=token,
                                  allow_patterns=["pytorch_model.bin"])
    except hub_failure_types() as exc:
        raise WeightsMissingError(
            f"cannot fetch AST {AST_HUB_REPO} from the Hugging Face hub ({hub_failure_reason(exc)}): "
            f"{_manual_hint(folder.parent)}"
        ) from None
    return folder


def hub_cache_dir() -> Path:
    """The Hugging Face cache as the environment says now (HF_HUB_CACHE, HF_HOME, default)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def in_hub_cache(repo_id: str, filenames: tuple[str, ...]) -> Path | None:
    """The first of ``filenames`` cached for ``repo_id`` in :func:`hub_cache_dir`, or None (never the network).

    The one probe of the hub cache: loading and ``mgsv models list`` both ask it.
    """
    from huggingface_hub import try_to_load_from_cache

    for name in filenames:
        found = try_to_load_from_cache(repo_id, name, cache_dir=str(hub_cache_dir()))
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def models_status(weights_dir: str | os.PathLike | None = None) -> list[WeightsStatus]:
    """Which pretrained encoder weights are available without a network: CLIP and AST."""
    weights_dir = Path(weights_dir).expanduser() if weights_dir is not None else None
    return [_clip_status(weights_dir), _ast_status(weights_dir)]


def _source_of(found: Path, env_name: str) -> str:
    env = os.environ.get(env_name)
    return "environment" if env and Path(env).expanduser() == found else "weights dir"


def _clip_status(weights_dir: Path | None) -> WeightsStatus:
    name = f"CLIP {CLIP_MODEL_NAME} ({CLIP_PRETRAINED_TAG})"
    found = find_clip_weights(weights_dir)
    if found is not None:
        return WeightsStatus(name, True, str(found), _source_of(found, "MGSV_CLIP_WEIGHTS"))
    cached = cached_clip_file()
    if cached is not None:
        return WeightsStatus(name, True, str(cached), "hub cache")
    return WeightsStatus(name, False, None, "missing", "run `mgsv models download`")


def _ast_status(weights_dir: Path | None) -> WeightsStatus:
    name = "AST AudioSet (0.4593)"
    found = find_ast_weights(weights_dir)
    if found is not None:
        if not _has_weight_file(found):
            return WeightsStatus(name, False, str(found), "missing", "config.json but no weights file")
        return WeightsStatus(name, True, str(found), _source_of(found, "MGSV_AST_WEIGHTS"))
    cached = cached_ast_weights()
    if cached is not None:
        return WeightsStatus(name, True, str(cached.parent), "hub cache")
    return WeightsStatus(name, False, None, "missing", "run `mgsv models download`")


def _has_weight_file(folder: Path) -> bool:
    return any((folder / name).is_file() for name in AST_WEIGHT_FILES)


# ---------------------------------------------------------------- finding local weights


def default_weights_dir() -> Path:
    """Where ``mgsv models download`` puts encoder weights (under MGSV_HOME when set)."""
    from mgsv_cli.paths import data_dir

    return data_dir() / "weights"


def _weight_dirs(weights_dir: Path | None) -> list[Path]:
    dirs = [Path(weights_dir).expanduser()] if weights_dir is not None else []
    return dirs + [default_weights_dir()]


def find_clip_weights(weights_dir: Path | None = None) -> Path | None:
    """A local CLIP ViT-B/32 OpenAI checkpoint: ``MGSV_CLIP_WEIGHTS`` (a file), or
    ``<dir>/clip-vit-b-32-openai/`` holding a .safetensors/.bin/.pt file, in
    ``weights_dir`` then the default weights dir. None when there is none."""
    env = os.environ.get("MGSV_CLIP_WEIGHTS")
    if env and Path(env).expanduser().is_file():
        return Path(env).expanduser()
    for base in _weight_dirs(weights_dir):
        folder = base / CLIP_WEIGHTS_SUBDIR
        for name in (*CLIP_HUB_FILES, "ViT-B-32.pt"):
            if (folder / name).is_file():
                return folder / name
        if folder.is_dir():
            found = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth"))
            if found:
                return found[0]
    return None


def find_ast_weights(weights_dir: Path | None = None) -> Path | None:
    """A local AST folder (``config.json`` + weights, as ``save_pretrained`` writes it):
    ``MGSV_AST_WEIGHTS``, or ``<dir>/ast-finetuned-audioset-10-10-0.4593/``. None if none."""
    candidates = []
    env = os.environ.get("MGSV_AST_WEIGHTS")
    if env:
        candidates.append(Path(env).expanduser())
    candidates += [base / AST_WEIGHTS_SUBDIR for base in _weight_dirs(weights_dir)]
    for folder in candidates:
        if (folder / "config.json").is_file():
            return folder
    return None


def cached_clip_file() -> Path | None:
    """The open_clip "openai" checkpoint in the Hugging Face cache, without any network."""
    return in_hub_cache(CLIP_HUB_REPO, CLIP_HUB_FILES)


def cached_ast_weights() -> Path | None:
    """The AST weights file in the Hugging Face cache when its config is there too, else None."""
    if in_hub_cache(AST_HUB_REPO, ("config.json",)) is None:
        return None
    return in_hub_cache(AST_HUB_REPO, AST_WEIGHT_FILES)
