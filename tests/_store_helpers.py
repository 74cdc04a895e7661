"""Shared by the tests that run one scenario on both track stores (an SQLite index, a Lance store)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mgsv_cli.index.records import NewTrack

STORE_KINDS = ("sqlite", "lance")


def store_at(folder: Path, kind: str, name: str = "lib") -> str:
    """Where a store of ``kind`` lives under ``folder`` (what `--index`/`--store` is given)."""
    return str(folder / (f"{name}.sqlite" if kind == "sqlite" else f"{name}.lance"))


def store_flag(target) -> str:
    """The CLI option that names ``target``: an SQLite index is ``--index``, a Lance store ``--store``."""
    return "--store" if str(target).rstrip("/").endswith(".lance") else "--index"


def synthetic(i: int, location: str | None = None, *, encoder_id: str = "tiny-x", n_valid: int | None = None,
              dim: int = 768) -> NewTrack:
    """Track ``i`` with random tokens (``n_valid`` leading valid windows of 96; 5 + i by default),
    at ``location`` (``/m/{i}.wav``) with content hash ``{i:032x}``."""
    rng = np.random.default_rng(i)
    n = 5 + i if n_valid is None else n_valid
    tokens = np.zeros((96, dim), np.float32)
    tokens[:n] = rng.standard_normal((n, dim))
    return NewTrack(location or f"/m/{i}.wav", f"{i:032x}", 2.5 * n, tokens, np.arange(96) < n, encoder_id,
                    {"title": f"T{i}"}, None)


def tiny_made(music_dim: int = 768, seed: int = 0):
    """An untrained tiny MaDe for tokens of ``music_dim`` (the tiny encoders make 64)."""
    import dataclasses

    import torch

    from mgsv_cli.models.made import MaDe
    from mgsv_cli.models.variants import load_config

    torch.manual_seed(seed)
    return MaDe(dataclasses.replace(load_config("tiny").model, music_dim=music_dim)).eval()
