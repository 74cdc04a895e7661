"""Downloads from the Hugging Face hub: the MGSV-EC dataset and the frozen encoders' weights.

Both need the network once; afterwards everything runs offline. Without a connection
(or with ``HF_HUB_OFFLINE=1``) each function raises a one-line error saying what to
fetch by hand and where to put it, never a traceback.

Weights land where :mod:`mgsv_cli.features` looks for them: ``WEIGHTS/clip-vit-b-32-openai/``
(open_clip's OpenAI ViT-B/32 checkpoint) and ``WEIGHTS/ast-finetuned-audioset-10-10-0.4593/``
(a ``save_pretrained`` folder), ``WEIGHTS`` being ``--weights-dir`` or mgsv's data folder.
No trained MaDe checkpoint is published; ``mgsv train`` makes one.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mgsv_cli.errors import DataError, WeightsMissingError

DATASET_REPO = "xxayt/MGSV-EC"
DATASET_SPLITS = ("train", "val", "test")
# The official release layout `mgsv train/eval --data ROOT` reads (spec section 2).
DATASET_CSV_DIR = Path("dataset") / "MGSV-EC"
FEATURE_DIRS = (
    Path("features/Kuai_feature/ast_feature2p5/ast_feature"),
    Path("features/Kuai_feature/ast_feature2p5/ast_mask"),
    Path("features/Kuai_feature/vit_feature1/vit_feature"),
    Path("features/Kuai_feature/vit_feature1/vit_mask"),
)
MADE_CHECKPOINT_NOTE = (
    "no pretrained MaDe checkpoint is published (the authors released code, not weights): "
    "train one with `mgsv train --data ROOT`"
)


@dataclass(frozen=True)
class WeightsStatus:
    """Whether one pretrained component is available locally, and where."""

    name: str
    present: bool
    location: str | None  # file or folder found, None when absent
    source: str  # "environment", "weights dir", "hub cache", or "missing"
    detail: str = ""


# ---------------------------------------------------------------- errors


def _offline_env() -> bool:
    flag = os.environ.get("HF_HUB_OFFLINE", "") or os.environ.get("TRANSFORMERS_OFFLINE", "")
    return flag.strip().lower() in ("1", "true", "yes", "on")


def _hub_failure_types() -> tuple[type[BaseException], ...]:
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


def _reason(exc: BaseException | None) -> str:
    """A short cause for a failed hub call (the library's own messages run to paragraphs)."""
    import huggingface_hub.errors as hf_errors

    if exc is None:
        return "no file"
    if _offline_env() or isinstance(exc, hf_errors.OfflineModeIsEnabled):
        return "offline mode is on (HF_HUB_OFFLINE=1)"
    if isinstance(exc, hf_errors.GatedRepoError):
        return "the repository is gated: accept its terms on huggingface.co and pass a token"
    if isinstance(exc, hf_errors.RepositoryNotFoundError):
        return "repository not found (or private: pass a token)"
    if isinstance(exc, hf_errors.LocalEntryNotFoundError):
        return "no connection to huggingface.co"
    lines = str(exc).strip().splitlines()
    return lines[0][:160] if lines else type(exc).__name__


@contextmanager
def _quiet_hub():
    """Silence the hub client's retry warnings for the duration: failures are reported once, by us."""
    import logging

    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


# ---------------------------------------------------------------- the dataset


def fetch_dataset(root: str | os.PathLike, repo_id: str = DATASET_REPO, token: str | None = None) -> Path:
    """Download the MGSV-EC dataset repository into ``root`` (resumable); returns ``root``.

    Already-downloaded files are skipped. Raises DataError (offline, unreachable, or the
    download does not have the official layout), with instructions for a manual download.
    """
    root = Path(root).expanduser()
    if root.exists() and not root.is_dir():
        raise DataError(f"{root} is a file: give a folder for the dataset")
    try:
        from huggingface_hub import snapshot_download

        root.mkdir(parents=True, exist_ok=True)
        with _quiet_hub():
            snapshot_download(repo_id=repo_id, repo_type="dataset", local_dir=str(root), token=token)
    except _hub_failure_types() as exc:
        raise DataError(
            f"cannot reach the Hugging Face hub to fetch {repo_id} ({_reason(exc)}). Download it manually "
            f"(https://huggingface.co/datasets/{repo_id}) and put it under {root} in this layout: "
            f"{layout_description()}"
        ) from None
    problems = dataset_layout_problems(root)
    if problems:
        raise DataError(f"{repo_id} was downloaded to {root} but is not in the layout mgsv reads: "
                        f"{'; '.join(problems)}. Expected: {layout_description()}")
    return root


def layout_description() -> str:
    csvs = ", ".join(f"{split}_data.csv" for split in DATASET_SPLITS)
    return (f"ROOT/{DATASET_CSV_DIR.as_posix()}/{{{csvs}}} and ROOT/features/Kuai_feature/"
            "{ast_feature2p5/ast_feature, ast_feature2p5/ast_mask, vit_feature1/vit_feature, "
            "vit_feature1/vit_mask}/<id>.pt")


def dataset_layout_problems(root: str | os.PathLike) -> list[str]:
    """What is missing from the official MGSV-EC layout under ``root`` (empty when complete)."""
    root = Path(root)
    problems = [f"missing {DATASET_CSV_DIR / f'{split}_data.csv'}" for split in DATASET_SPLITS
                if not (root / DATASET_CSV_DIR / f"{split}_data.csv").is_file()]
    problems += [f"missing folder {folder}" for folder in FEATURE_DIRS if not (root / folder).is_dir()]
    return problems


# ---------------------------------------------------------------- encoder weights


def _weights_root(weights_dir: str | os.PathLike | None) -> Path:
    from mgsv_cli.features.encoders import default_weights_dir

    return Path(weights_dir).expanduser() if weights_dir is not None else default_weights_dir()


def download_models(weights_dir: str | os.PathLike | None = None, token: str | None = None) -> list[Path]:
    """Fetch the frozen encoders' weights so that later runs work offline; returns what was written.

    CLIP ViT-B/32 (OpenAI weights, from open_clip's hub repository) goes to
    ``WEIGHTS/clip-vit-b-32-openai/`` and AST (AudioSet 0.4593) to
    ``WEIGHTS/ast-finetuned-audioset-10-10-0.4593/``, where ``WEIGHTS`` is ``weights_dir``
    or mgsv's default weights folder (both are searched by ``mgsv index/suggest``).
    Raises WeightsMissingError when the hub cannot be reached.
    """
    from mgsv_cli.features import encoders as features

    root = _weights_root(weights_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WeightsMissingError(f"cannot create the weights folder {root}: {exc.strerror or exc}") from None
    clip = _download_clip(root / features.CLIP_WEIGHTS_SUBDIR, token)
    ast = _download_ast(root / features.AST_WEIGHTS_SUBDIR, token)
    return [clip, ast]


def _manual_hint(root: Path) -> str:
    from mgsv_cli.features import encoders as features

    return (f"download them on a connected machine with `mgsv models download --weights-dir DIR` and copy DIR "
            f"here, or set MGSV_CLIP_WEIGHTS to an open_clip ViT-B-32 OpenAI checkpoint file and MGSV_AST_WEIGHTS "
            f"to a folder with {features.AST_HUB_REPO}'s config.json and weights (default place: {root})")


def _download_clip(folder: Path, token: str | None) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    from mgsv_cli.features import encoders as features

    last: BaseException | None = None
    for filename in features.CLIP_HUB_FILES:  # safetensors first, the pickle only if it is all there is
        try:
            with _quiet_hub():
                return Path(hf_hub_download(repo_id=features.CLIP_HUB_REPO, filename=filename,
                                            local_dir=str(folder), token=token))
        except RemoteEntryNotFoundError as exc:
            last = exc
        except _hub_failure_types() as exc:
            last = exc
            break  # no connection: the next file would fail the same way, slowly
    raise WeightsMissingError(
        f"cannot fetch CLIP {features.CLIP_MODEL_NAME} '{features.CLIP_PRETRAINED_TAG}' from the Hugging Face hub "
        f"({_reason(last)}): {_manual_hint(folder.parent)}"
    )


def _download_ast(folder: Path, token: str | None) -> Path:
    from huggingface_hub import snapshot_download

    from mgsv_cli.features import encoders as features

    try:
        with _quiet_hub():
            snapshot_download(repo_id=features.AST_HUB_REPO, local_dir=str(folder), token=token,
                              allow_patterns=["*.json", "*.safetensors"])
            if not any(folder.glob("*.safetensors")):  # older repositories hold only a pickle
                snapshot_download(repo_id=features.AST_HUB_REPO, local_dir=str(folder), token=token,
                                  allow_patterns=["pytorch_model.bin"])
    except _hub_failure_types() as exc:
        raise WeightsMissingError(
            f"cannot fetch AST {features.AST_HUB_REPO} from the Hugging Face hub ({_reason(exc)}): "
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


def _in_hub_cache(repo_id: str, filenames: tuple[str, ...]) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    for name in filenames:
        found = try_to_load_from_cache(repo_id, name, cache_dir=str(hub_cache_dir()))
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def models_status(weights_dir: str | os.PathLike | None = None) -> list[WeightsStatus]:
    """Which pretrained weights are available without a network: CLIP, AST, and MaDe."""
    from mgsv_cli.features import encoders as features

    weights_dir = Path(weights_dir).expanduser() if weights_dir is not None else None
    return [_clip_status(features, weights_dir), _ast_status(features, weights_dir), _made_status()]


def _source_of(found: Path, env_name: str) -> str:
    env = os.environ.get(env_name)
    return "environment" if env and Path(env).expanduser() == found else "weights dir"


def _clip_status(features, weights_dir: Path | None) -> WeightsStatus:
    name = f"CLIP {features.CLIP_MODEL_NAME} ({features.CLIP_PRETRAINED_TAG})"
    found = features.find_clip_weights(weights_dir)
    if found is not None:
        return WeightsStatus(name, True, str(found), _source_of(found, "MGSV_CLIP_WEIGHTS"))
    cached = _in_hub_cache(features.CLIP_HUB_REPO, features.CLIP_HUB_FILES)
    if cached is not None:
        return WeightsStatus(name, True, str(cached), "hub cache")
    return WeightsStatus(name, False, None, "missing", "run `mgsv models download`")


def _ast_status(features, weights_dir: Path | None) -> WeightsStatus:
    name = "AST AudioSet (0.4593)"
    found = features.find_ast_weights(weights_dir)
    if found is not None:
        if not _has_weight_file(found):
            return WeightsStatus(name, False, str(found), "missing", "config.json but no weights file")
        return WeightsStatus(name, True, str(found), _source_of(found, "MGSV_AST_WEIGHTS"))
    config = _in_hub_cache(features.AST_HUB_REPO, ("config.json",))
    weights = _in_hub_cache(features.AST_HUB_REPO, ("model.safetensors", "pytorch_model.bin"))
    if config is not None and weights is not None:
        return WeightsStatus(name, True, str(weights.parent), "hub cache")
    return WeightsStatus(name, False, None, "missing", "run `mgsv models download`")


def _has_weight_file(folder: Path) -> bool:
    return any((folder / name).is_file() for name in ("model.safetensors", "pytorch_model.bin"))


def _made_status() -> WeightsStatus:
    from mgsv_cli.models.checkpoint import WEIGHTS_NAME, latest_run

    run = latest_run()
    if run is not None:
        return WeightsStatus("MaDe checkpoint", True, str(run / WEIGHTS_NAME), "trained run")
    return WeightsStatus("MaDe checkpoint", False, None, "missing", MADE_CHECKPOINT_NOTE)


