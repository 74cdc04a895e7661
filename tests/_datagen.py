"""Test helpers for MGSV-EC-layout data: the library's generator, plus ways to break a dataset.

The generator itself is library code, :mod:`mgsv_cli.research.synthetic` (``mgsv data
synth``; its docstring records the design). ``make_dataset`` here keeps the keyword
names the tests use (``n_train``/``n_val``/``n_test`` rather than ``n_videos``).
Helpers at the end break things for error tests.
"""
from __future__ import annotations

import csv
from pathlib import Path

import torch

from mgsv_cli.research.dataset import CSV_COLUMNS, csv_path, feature_path
from mgsv_cli.research.synthetic import SyntheticDataset, Track
from mgsv_cli.research.synthetic import make_dataset as _make_dataset

DatasetInfo = SyntheticDataset

__all__ = ["DatasetInfo", "SyntheticDataset", "Track", "make_dataset", "read_csv_rows", "drop_csv_columns",
           "set_csv_cell", "remove_feature", "write_feature"]


def make_dataset(root: str | Path, n_tracks: int = 40, n_train: int = 600, n_val: int = 100,
                 n_test: int = 100, seed: int = 0, noise: float = 0.5, style_noise: float = 0.3) -> SyntheticDataset:
    """:func:`mgsv_cli.research.synthetic.make_dataset` with per-split sizes: ``n_train``
    videos over ``n_tracks`` train tracks, ``n_val``/``n_test`` videos with a track each."""
    return _make_dataset(root, n_videos=n_train + n_val + n_test, n_tracks=n_tracks, seed=seed,
                         n_val=n_val, n_test=n_test, noise=noise, style_noise=style_noise)


def _write_csv(path: Path, rows: list[dict], columns=CSV_COLUMNS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


# ------------------------------------------------------------------ breaking things


def read_csv_rows(root: str | Path, split: str) -> tuple[list[str], list[dict]]:
    """Header and rows (dicts of strings) of a split CSV."""
    with open(csv_path(root, split), newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def drop_csv_columns(root: str | Path, split: str, *columns: str) -> Path:
    """Rewrite a split CSV without the given columns."""
    header, rows = read_csv_rows(root, split)
    path = csv_path(root, split)
    _write_csv(path, rows, [c for c in header if c not in columns])
    return path


def set_csv_cell(root: str | Path, split: str, row: int, column: str, value: str) -> Path:
    """Overwrite one cell (data row ``row``, 0-based; it sits on file line row + 2)."""
    header, rows = read_csv_rows(root, split)
    rows[row][column] = value
    path = csv_path(root, split)
    _write_csv(path, rows, header)
    return path


def remove_feature(root: str | Path, kind: str, item_id: str) -> Path:
    """Delete one feature file (kind: video, video_mask, music, music_mask)."""
    path = feature_path(root, kind, item_id)
    path.unlink()
    return path


def write_feature(root: str | Path, kind: str, item_id: str, value) -> Path:
    """Replace one feature file with ``value`` (any torch-saveable object)."""
    path = feature_path(root, kind, item_id)
    torch.save(value, path)
    return path
