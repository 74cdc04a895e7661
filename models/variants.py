"""Frozen configs for the network and its training, read from ``models/*.toml``.

A model variant is one TOML file with a ``[model]`` table (architecture) and a
``[train]`` table (recipe). ``load_config("made")`` finds the shipped file by
name; any other argument is read as a path.
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mgsv_cli.errors import ConfigError
from mgsv_cli.features import recipe

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib


@dataclass(frozen=True)
class ModelConfig:
    """MaDe's architecture. Defaults are the paper's model (spec section 4)."""

    video_dim: int = recipe.CLIP_EMBED_DIM
    music_dim: int = recipe.AST_EMBED_DIM
    n_frames: int = recipe.N_VIDEO_FRAMES
    n_windows: int = recipe.N_MUSIC_WINDOWS
    max_music_seconds: float = recipe.MAX_MUSIC_SECONDS  # spans are normalised by this
    d_model: int = 256
    n_heads: int = 8
    ffn_dim: int = 1024
    enhance_dropout: float = 0.8
    xpool_dropout: float = 0.3
    n_encoder_layers: int = 2
    n_decoder_layers: int = 6
    detect_dropout: float = 0.1
    # made-plus switches (models/README.md); the defaults are the paper's network.
    n_music_scales: int = 1  # X-Pool over windows pooled x1, x2, x4, ... (this many scales), learned fusion
    known_width: bool = False  # the cut's width is the video's (from its frame mask), fed to the decoder query
    duration_query: bool = False  # the video's length added to its pooled vector (the matching query), zero at start
    xpool_sharpness: float = 0.0  # > 0: X-Pool's attention logits times a learned scale starting here (0: fixed)
    start_pointer: bool = False  # the decoder points at the window where the cut starts, then regresses an offset
    querybank_size: int = 0  # > 0: rank with querybank normalisation over this many training videos (QB-Norm)
    querybank_beta: float = 10.0  # inverse temperature of the soft maximum over the querybank
    querybank_weight: float = 0.5  # how much of that soft maximum each track's score loses

    def __post_init__(self):
        if self.n_music_scales < 1:
            raise ValueError(f"n_music_scales must be at least 1, not {self.n_music_scales}")
        if self.xpool_sharpness < 0:
            raise ValueError(
                f"xpool_sharpness must be 0 (the paper's fixed scale) or positive, not {self.xpool_sharpness}"
            )
        if self.querybank_size < 0:
            raise ValueError(f"querybank_size must be 0 (off) or positive, not {self.querybank_size}")
        if self.querybank_beta <= 0 or self.querybank_weight < 0:
            raise ValueError(f"querybank_beta must be positive and querybank_weight at least 0, not "
                             f"{self.querybank_beta} and {self.querybank_weight}")


@dataclass(frozen=True)
class TrainConfig:
    """Training recipe. Defaults are the reference run (spec section 4, Training)."""

    epochs: int = 100
    batch_size: int = 512
    lr: float = 3e-4
    warmup_fraction: float = 0.02
    grad_clip: float = 1.0
    l1_weight: float = 4.0
    giou_weight: float = 1.0
    logit_scale_init: float = 1.0 / 0.03
    mask_same_track_negatives: bool = False
    # InfoNCE over the batch's distinct tracks, same-track videos positives (losses.py)
    same_track_positives: bool = False
    start_weight: float = 1.0  # cross-entropy on the labelled start window (models with start_pointer only)
    detect_grad_scale: float = 1.0  # made-plus: detection's gradient into the shared enhancers times this (0: stopped)
    precision: str = "auto"  # auto | fp32 | bf16
    seed: int = 0
    eval_batch_size: int = 256

    def __post_init__(self):
        if not 0.0 <= self.detect_grad_scale <= 1.0:
            raise ValueError(f"detect_grad_scale must be from 0 (detection's gradient stopped at the enhancers) "
                             f"to 1 (the paper's), not {self.detect_grad_scale}")


# ----------------------------------------------------------------------------- ReAL (seed 003)


@dataclass(frozen=True)
class RealModelConfig:
    """ReAL's architecture (spec section 6, seed 003): a retrieval model, then Music-DETR.

    Both stages use the same context modelling (a Linear to ``d_model`` per modality, then
    ONE masked transformer block shared by video and music), each stage its own weights.
    Where the paper is silent the sizes are Moment-DETR's (its DETR ancestor): 10 queries,
    2 encoder and 2 decoder layers, dropout 0.1; one cross-attention layer for the fusion.
    """

    video_dim: int = recipe.CLIP_EMBED_DIM
    music_dim: int = recipe.AST_EMBED_DIM
    n_frames: int = recipe.N_VIDEO_FRAMES
    n_windows: int = recipe.N_MUSIC_WINDOWS
    max_music_seconds: float = recipe.MAX_MUSIC_SECONDS
    d_model: int = 256
    n_heads: int = 8
    ffn_dim: int = 1024
    dropout: float = 0.1
    n_fusion_layers: int = 1  # cross-attention layers, music tokens as queries, video as keys/values
    n_encoder_layers: int = 2  # self-attention layers over the fused music tokens
    n_decoder_layers: int = 2
    n_queries: int = 10  # Q moment queries


@dataclass(frozen=True)
class RealTrainConfig:
    """ReAL's recipe: two stages trained separately (spec section 6).

    ``epochs``/``lr``, when set (``mgsv train --epochs/--lr``), replace both stages' own
    values. Loss weights and the matching costs are Moment-DETR's (the paper gives none).
    """

    batch_size: int = 512
    retrieval_epochs: int = 100
    retrieval_lr: float = 1e-4
    localisation_epochs: int = 80
    localisation_lr: float = 3e-4
    epochs: int | None = None
    lr: float | None = None
    warmup_fraction: float = 0.05
    weight_decay: float = 1e-4
    grad_clip: float = 0.1
    temperature_init: float = 0.07  # InfoNCE temperature of retrieval (learned, CLIP's start)
    l1_weight: float = 10.0
    giou_weight: float = 1.0
    class_weight: float = 4.0
    background_weight: float = 0.1  # class weight of the unmatched (background) queries
    align_weight: float = 0.02
    align_temperature: float = 0.07
    precision: str = "auto"
    seed: int = 0
    eval_batch_size: int = 256

    def stage_epochs(self, stage: str) -> int:
        """Epochs of ``stage`` (``retrieval`` or ``localisation``)."""
        return self.epochs if self.epochs is not None else getattr(self, f"{stage}_epochs")

    def stage_lr(self, stage: str) -> float:
        """Peak learning rate of ``stage``."""
        return self.lr if self.lr is not None else getattr(self, f"{stage}_lr")


# ----------------------------------------------------------------------------- variants

# A variant's family names the network it builds; each family has its own config types.
FAMILIES: dict[str, tuple[type, type]] = {
    "made": (ModelConfig, TrainConfig),
    "real": (RealModelConfig, RealTrainConfig),
}


@dataclass(frozen=True)
class VariantConfig:
    """One model variant: its name, family (``made`` or ``real``), architecture and recipe."""

    name: str
    model: Any = field(default_factory=ModelConfig)
    train: Any = field(default_factory=TrainConfig)
    family: str = "made"


def _build(cls: type, table: dict[str, Any], where: str) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(table) - known
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    try:
        return cls(**table)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def variant_from_dict(name: str, data: dict[str, Any], where: str = "config") -> VariantConfig:
    """Build a variant from a parsed TOML/JSON mapping with ``model``/``train`` tables."""
    family = str(data.get("family", "made"))
    if family not in FAMILIES:
        raise ConfigError(f"{where}: unknown model family '{family}' (known: {', '.join(sorted(FAMILIES))})")
    model_cls, train_cls = FAMILIES[family]
    model = _build(model_cls, dict(data.get("model", {})), f"{where} [model]")
    train = _build(train_cls, dict(data.get("train", {})), f"{where} [train]")
    return VariantConfig(name=str(data.get("name", name)), model=model, train=train, family=family)


def variant_to_dict(variant: VariantConfig) -> dict[str, Any]:
    """Inverse of :func:`variant_from_dict` (JSON-serialisable)."""
    return {
        "name": variant.name,
        "family": variant.family,
        "model": dataclasses.asdict(variant.model),
        "train": dataclasses.asdict(variant.train),
    }


def shipped_variants() -> dict[str, Path]:
    """Names and paths of the model variants shipped with mgsv (``models/*.toml``)."""
    found: dict[str, Path] = {}
    for folder in _model_folders():
        for path in sorted(folder.glob("*.toml")):
            found.setdefault(path.stem, path)
    return found


def _model_folders() -> list[Path]:
    # The TOMLs ship beside this module (models/ is the mgsv_cli.models package).
    return [Path(__file__).resolve().parent]


def load_config(name_or_path: str = "made") -> VariantConfig:
    """Load a variant by shipped name (``made``, ``tiny``) or from a TOML file path."""
    path = Path(name_or_path).expanduser()
    if not (path.suffix == ".toml" and path.is_file()):
        shipped = shipped_variants()
        if name_or_path not in shipped:
            names = ", ".join(sorted(shipped)) or "none"
            raise ConfigError(f"no model config '{name_or_path}' (shipped: {names}; or give a .toml path)")
        path = shipped[name_or_path]
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read model config {path}: {exc}") from None
    return variant_from_dict(path.stem, data, where=str(path))


def replace_train(variant: VariantConfig, **changes: Any) -> VariantConfig:
    """Return ``variant`` with the given training fields changed (``None`` values ignored)."""
    changes = {k: v for k, v in changes.items() if v is not None}
    return dataclasses.replace(variant, train=dataclasses.replace(variant.train, **changes))
