"""What both training loops share: run folders, the schedule, model selection, the log.

:mod:`~mgsv_cli.research.train` (MaDe, one stage) and
:mod:`~mgsv_cli.research.train_real` (ReAL, two stages) import these; ``train`` also
dispatches to ``train_real``, so they live here rather than in either loop.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mgsv_cli.errors import CheckpointError, UsageError
from mgsv_cli.models.checkpoint import LAST_NAME, WEIGHTS_NAME, atomic_write_json, save_weights
from mgsv_cli.models.variants import VariantConfig, variant_from_dict

PAPER_METRICS = ("miou", "r1", "r5", "r10", "mor1", "mor10", "mor100")


class Reporter:
    """Callbacks the training loop makes; the default does nothing."""

    def start(self, info: dict[str, Any]) -> None: ...

    def start_epoch(self, epoch: int, n_epochs: int, n_steps: int) -> None: ...

    def step(self, loss: float, lr: float) -> None: ...

    def end_epoch(self, epoch: int, train_loss: float, metrics: dict[str, Any], is_best: bool) -> None: ...

    def interrupted(self, run_dir: Path, epochs_done: int) -> None:
        """Training was interrupted (Ctrl-C) with ``epochs_done`` epochs saved in ``run_dir``."""


@dataclass
class TrainResult:
    run_dir: Path
    best_metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


def learning_rate(step: int, total_steps: int, base_lr: float, warmup_fraction: float) -> float:
    """Linear warm-up to ``base_lr`` over the first steps, then cosine decay to zero."""
    n_warmup = max(1, int(round(total_steps * warmup_fraction)))
    if step < n_warmup:
        return base_lr * (step + 1) / n_warmup
    progress = (step - n_warmup) / max(1, total_steps - n_warmup)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def selection_score(metrics: dict[str, Any]) -> float:
    """Model-selection criterion on val: the mean of the paper's seven numbers in percent."""
    values = [metrics["miou"] * 100.0] + [metrics[k] for k in PAPER_METRICS[1:]]
    return float(sum(values) / len(values))


# ----------------------------------------------------------------------------- run folder


def new_run_dir(variant: VariantConfig) -> Path:
    from mgsv_cli.paths import runs_dir

    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = runs_dir() / f"{stamp}-{variant.name}"
    suffix = 1
    while folder.exists():
        suffix += 1
        folder = runs_dir() / f"{stamp}-{variant.name}-{suffix}"
    return folder


def latest_resumable() -> Path | None:
    from mgsv_cli.paths import runs_dir

    folder = runs_dir()
    runs = [p for p in folder.iterdir() if (p / LAST_NAME).is_file()] if folder.is_dir() else []
    return max(runs, key=lambda p: (p / LAST_NAME).stat().st_mtime, default=None)


def choose_run_dir(out_dir: Path | None, variant: VariantConfig, resume: bool) -> Path:
    """The run folder to write: never clobbers a run unless asked to resume it."""
    if resume:
        folder = out_dir if out_dir is not None else latest_resumable()
        if folder is None or not (folder / LAST_NAME).is_file():
            raise CheckpointError(f"nothing to resume in {folder or 'the runs folder'}: no {LAST_NAME} there")
        return folder
    if out_dir is None:
        return new_run_dir(variant)
    if (out_dir / LAST_NAME).exists() or (out_dir / WEIGHTS_NAME).exists():
        raise UsageError(f"{out_dir} already holds a training run: pass --resume to continue it, or another --out")
    return out_dir


def saved_epochs_done(run_dir: Path) -> int:
    try:
        return int(json.loads((run_dir / "state.json").read_text())["epochs_done"])
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(f"cannot resume {run_dir}: state.json is missing or unreadable") from None


def saved_variant(run_dir: Path) -> VariantConfig:
    path = run_dir / "config.json"
    if not path.is_file():
        raise CheckpointError(f"cannot resume {run_dir}: config.json is missing")
    return variant_from_dict(run_dir.name, json.loads(path.read_text()), where=str(path))


class RunLog:
    """Plain, append-only training log beside the checkpoint."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, line: str) -> None:
        with open(self.path, "a") as handle:
            handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")


# ----------------------------------------------------------------------------- resume points


def save_resume_point(run_dir: Path, model, optimizer, variant: VariantConfig, state: dict[str, Any]) -> None:
    """Everything needed to continue exactly after this epoch: ``last.safetensors`` (weights,
    Adam moments, RNG state) and ``state.json`` (``state``: where the schedule stands)."""
    import torch

    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    names = {id(p): n for n, p in model.named_parameters()}
    for param, slot in optimizer.state.items():
        for key in ("exp_avg", "exp_avg_sq"):
            tensors[f"optim.{names[id(param)]}.{key}"] = slot[key]
    tensors["rng.torch"] = torch.get_rng_state()
    device = next(model.parameters()).device
    if device.type == "cuda":  # dropout draws from the GPU's generator there
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    save_weights(run_dir / LAST_NAME, tensors, variant)
    atomic_write_json(run_dir / "state.json", state)


def load_resume_point(run_dir: Path, model) -> dict[str, Any]:
    """Put the saved weights and RNG state back; returns the saved tensors (for :func:`restore_optimizer`)."""
    import torch
    from safetensors.torch import load_file

    tensors = load_file(str(run_dir / LAST_NAME))
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    torch.set_rng_state(tensors["rng.torch"])
    device = next(model.parameters()).device
    if device.type == "cuda" and "rng.cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)
    return tensors


def restore_optimizer(model, optimizer, tensors: dict[str, Any], step: int) -> None:
    """Adam(W)'s moments of the saved parameters, at schedule position ``step``."""
    import torch

    fused = any(group.get("fused") for group in optimizer.param_groups)
    for name, param in model.named_parameters():
        if f"optim.{name}.exp_avg" in tensors:
            optimizer.state[param] = {
                # the fused kernel keeps its step count on the device, as float32
                "step": torch.tensor(float(step), dtype=torch.float32, device=param.device if fused else "cpu"),
                "exp_avg": tensors[f"optim.{name}.exp_avg"].to(param.device),
                "exp_avg_sq": tensors[f"optim.{name}.exp_avg_sq"].to(param.device),
            }
