"""Checkpoints: a config plus weights in safetensors, never pickles.

A training run is a folder::

    RUN/model.safetensors   best-on-val weights; the config travels in the file's metadata
    RUN/config.json         the variant (architecture + recipe), readable by people
    RUN/metrics.json        validation metrics of the saved weights, per-epoch history
    RUN/last.safetensors    weights, optimizer moments and RNG state after the last epoch (resume)
    RUN/state.json          where that last epoch left the schedule
    RUN/train.log           a plain log

:func:`load_model` is the one loading entry point: it takes a run folder, a weights file,
or nothing (the latest run under :func:`mgsv_cli.paths.runs_dir`).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from mgsv_cli.errors import CheckpointError, first_line
from mgsv_cli.models.variants import VariantConfig, load_config, variant_from_dict, variant_to_dict
from mgsv_cli.paths import atomic_write_bytes

WEIGHTS_NAME = "model.safetensors"
LAST_NAME = "last.safetensors"
CONFIG_KEY = "mgsv_config"
ID_KEY = "mgsv_checkpoint_id"

HOW_TO_GET_ONE = (  # commands that can run without one (suggest --untrained) add their own way out
    "train one with `mgsv train --data ROOT` (MGSV-EC features), or point --checkpoint at a run folder "
    "or .safetensors file"
)


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write_bytes(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def save_weights(path: Path, tensors: dict, variant: VariantConfig, extra: dict[str, str] | None = None) -> str:
    """Save tensors with the variant in the file's metadata; returns the content id."""
    from safetensors.torch import save

    tensors = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    body = save(tensors)
    checkpoint_id = hashlib.sha256(body).hexdigest()[:16]
    metadata = {CONFIG_KEY: json.dumps(variant_to_dict(variant)), ID_KEY: checkpoint_id, **(extra or {})}
    atomic_write_bytes(path, save(tensors, metadata=metadata))
    return checkpoint_id


def save_checkpoint(run_dir: Path, model, variant: VariantConfig, metrics: dict) -> str:
    """Save ``model``'s weights as the run's best, with its config and metrics."""
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_id = save_weights(run_dir / WEIGHTS_NAME, model.state_dict(), variant)
    atomic_write_json(run_dir / "config.json", variant_to_dict(variant))
    atomic_write_json(run_dir / "metrics.json", {**metrics, "checkpoint_id": checkpoint_id})
    return checkpoint_id


def latest_run() -> Path | None:
    """The most recently written run folder holding weights, or None."""
    from mgsv_cli.paths import runs_dir

    folder = runs_dir()
    if not folder.is_dir():
        return None
    runs = [p for p in folder.iterdir() if (p / WEIGHTS_NAME).is_file()]
    return max(runs, key=lambda p: (p / WEIGHTS_NAME).stat().st_mtime, default=None)


def resolve_checkpoint(checkpoint: str | os.PathLike | None) -> Path:
    """The weights file meant by a run folder, a weights file, or None (latest run)."""
    if checkpoint is None:
        run = latest_run()
        if run is None:
            raise CheckpointError(f"no trained checkpoint found: {HOW_TO_GET_ONE}")
        return run / WEIGHTS_NAME
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        path = path / WEIGHTS_NAME
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} ({HOW_TO_GET_ONE})")
    return path


_MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on the JSON header


def read_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a safetensors file (config, id), read from its JSON header alone.

    The format is an 8-byte little-endian header length, then the header (JSON, with the
    metadata under ``__metadata__``): read directly so that checking a checkpoint costs no
    torch import (seconds on a laptop) and no tensor."""
    try:
        with open(path, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            if not 0 < size <= _MAX_HEADER_BYTES:
                raise ValueError(f"header length {size}")
            header = json.loads(handle.read(size))
        metadata = header.get("__metadata__") or {}
        if not isinstance(metadata, dict):
            raise ValueError("metadata is not a table")
        return {str(k): str(v) for k, v in metadata.items()}
    except (OSError, ValueError, AttributeError) as exc:  # truncated, not JSON, not a table
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({first_line(exc)})") from None


def _variant_of(path: Path, metadata: dict[str, str]) -> VariantConfig:
    if CONFIG_KEY in metadata:
        return variant_from_dict("checkpoint", json.loads(metadata[CONFIG_KEY]), where=str(path))
    sidecar = path.parent / "config.json"
    if sidecar.is_file():
        return variant_from_dict("checkpoint", json.loads(sidecar.read_text()), where=str(sidecar))
    raise CheckpointError(f"{path}: no config in the file's metadata and no config.json beside it")


def checkpoint_variant(checkpoint: str | os.PathLike | None = None) -> tuple[Path, VariantConfig]:
    """(weights file, variant) of a checkpoint, from its metadata alone: no tensor is read, so
    callers can check what a checkpoint needs (its input widths) before loading anything."""
    path = resolve_checkpoint(checkpoint)
    return path, _variant_of(path, read_metadata(path))


FAMILY_NAMES = {"made": "MaDe", "real": "ReAL"}


def build_network(variant: VariantConfig):
    """The untrained network of ``variant``'s family (``made`` -> MaDe, ``real`` -> ReAL)."""
    if variant.family == "real":
        from mgsv_cli.models.real import Real

        return Real(variant.model)
    from mgsv_cli.models.made import MaDe

    return MaDe(variant.model)


def check_family(path, variant: VariantConfig, expect_family: str | None) -> None:
    """Raise :class:`CheckpointError` when ``variant`` is not of ``expect_family`` (None: any)."""
    if expect_family is not None and variant.family != expect_family:
        have, need = (FAMILY_NAMES.get(f, f) for f in (variant.family, expect_family))
        raise CheckpointError(f"{path} is a {have} checkpoint; this needs a {need} one")


def load_model(checkpoint: str | os.PathLike | None = None, device=None, expect_family: str | None = None):
    """Load a trained network (MaDe or ReAL, as the checkpoint's family says) for inference (eval mode).

    Returns ``(model, variant, meta)``; ``meta`` has ``path``, ``checkpoint_id`` and ``metrics``.
    Raises :class:`CheckpointError` with a hint when there is no usable checkpoint, or when
    ``expect_family`` is given and the checkpoint is of another family.
    """
    import torch
    from safetensors.torch import load_file

    path, variant = checkpoint_variant(checkpoint)
    metadata = read_metadata(path)
    check_family(path, variant, expect_family)
    model = build_network(variant)
    try:
        state = load_file(str(path))
        model.load_state_dict(state, strict=True)
    except (RuntimeError, OSError) as exc:
        raise CheckpointError(f"{path}: weights do not match config '{variant.name}': {first_line(exc)}") from None
    model.to(device or torch.device("cpu")).eval()
    metrics_file = path.parent / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    meta = {"path": str(path), "checkpoint_id": metadata.get(ID_KEY, _file_id(path)), "metrics": metrics}
    return model, variant, meta


def build_untrained(video_dim: int = 512, music_dim: int = 768, config: str = "made", seed: int = 0):
    """A randomly initialised network of ``config`` (eval mode) for demos and tests: ``(model, variant)``."""
    import dataclasses

    import torch

    variant = load_config(config)
    model_cfg = dataclasses.replace(variant.model, video_dim=video_dim, music_dim=music_dim)
    variant = dataclasses.replace(variant, model=model_cfg)
    with torch.random.fork_rng():  # a demo model must not disturb the caller's random stream
        torch.manual_seed(seed)
        model = build_network(variant).eval()
    return model, variant


def _file_id(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


MADE_CHECKPOINT_NOTE = (
    "no pretrained MaDe checkpoint is published (the authors released code, not weights): "
    "train one with `mgsv train --data ROOT`"
)
