"""Curves: a training run leaves TensorBoard event files and curves.png; eval and the bench draw plots."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from _datagen import make_dataset

from mgsv_cli.models.variants import load_config, replace_train
from mgsv_cli.research.curves import (
    CURVES_NAME,
    EVAL_PLOTS,
    per_category_rows,
    plot_comparison,
    read_scalars,
    write_eval_plots,
)
from mgsv_cli.research.train import train

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (and the file must be a whole PNG)."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert data[12:16] == b"IHDR" and data.endswith(b"IEND\xaeB`\x82"), path
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("mgsv-ec"), n_tracks=8, n_train=64, n_val=16, n_test=16, seed=2)


@pytest.fixture(scope="module")
def plus_run(small, tmp_path_factory):
    variant = replace_train(load_config("tiny-plus"), epochs=2, batch_size=16)
    run = tmp_path_factory.mktemp("runs") / "plus"
    return train(small.root, variant, out_dir=run, device="cpu"), variant


def test_training_writes_event_files_tensorboard_reads_back(plus_run):
    result, variant = plus_run
    scalars = read_scalars(result.run_dir)
    steps = 2 * (64 // 16)
    for tag in ("train/loss", "train/matching", "train/detection", "train/start", "train/grad_norm", "train/lr"):
        assert [step for step, _ in scalars[tag]] == list(range(1, steps + 1)), tag
    for key in ("miou", "r1", "r5", "r10", "mor1", "mor10", "mor100", "miou_cut", "mor1_cut", "score"):
        assert len(scalars[f"val/{key}"]) == 2, key
    assert {"learned/logit_scale", "learned/xpool_sharpness", "train/epoch_loss"} <= set(scalars)
    # What the event files hold is what the run recorded.
    for record, (step, r1) in zip(result.history, scalars["val/r1"]):
        assert r1 == pytest.approx(record["r1"], abs=1e-4)
    first_lr = scalars["train/lr"][0][1]
    assert 0 < first_lr <= variant.train.lr * (1 + 1e-6)  # stored as float32
    assert scalars["learned/xpool_sharpness"][0][1] == pytest.approx(result.history[0]["learned"]["xpool_sharpness"])
    # The total is the sum of its terms (start weighted by start_weight), step by step.
    terms = (scalars[f"train/{t}"] for t in ("loss", "matching", "detection", "start"))
    for (_, total), (_, m), (_, d), (_, s) in zip(*terms):
        assert total == pytest.approx(m + d + variant.train.start_weight * s, rel=1e-4, abs=1e-4)


def test_training_draws_curves_png_and_keeps_terms_in_the_history(plus_run):
    result, _ = plus_run
    width, height = png_size(result.run_dir / CURVES_NAME)
    assert width > 300 and height > 200
    saved = json.loads((result.run_dir / "state.json").read_text())["history"]
    assert [r["epoch"] for r in saved] == [1, 2]
    assert {"matching", "detection", "start", "grad_norm", "loss"} <= set(saved[0]["train_terms"])
    assert saved[0]["lr"] > 0 and "logit_scale" in saved[0]["learned"]


def test_eval_plots_are_images_and_a_category_table(tmp_path):
    rng = np.random.default_rng(0)
    n = 50
    details = {"ranks": rng.integers(0, 30, n), "ious": rng.uniform(0, 1, n), "cut_ious": rng.uniform(0, 1, n),
               "categories": rng.choice(["Food", "Pets", "Games"], n), "n_tracks": 30}
    written = write_eval_plots(details, tmp_path / "plots", "test", 0.7)
    assert [p.name for p in written] == list(EVAL_PLOTS)
    for path in written[:2]:
        png_size(path)
    rows = list(csv.DictReader((tmp_path / "plots" / "per_category.csv").open()))
    assert rows[-1]["category"] == "all" and int(rows[-1]["n"]) == n
    assert sum(int(r["n"]) for r in rows[:-1]) == n
    assert "| category |" in (tmp_path / "plots" / "per_category.md").read_text()


def test_per_category_numbers_by_hand():
    rows = per_category_rows(["a", "a", "b"], np.array([0, 3, 0]), np.array([0.9, 0.8, 0.5]), 0.7)
    a, b, everyone = rows
    assert (a["category"], a["n"], a["r1"], a["r5"], a["mor1"]) == ("a", 2, 50.0, 100.0, 50.0)
    assert (b["r1"], b["mor1"]) == (100.0, 0.0)
    assert everyone["miou"] == pytest.approx(2.2 / 3) and everyone["r1"] == pytest.approx(200 / 3)


def test_plot_comparison_draws_variants_over_budgets(tmp_path):
    curves = {"6 epochs": {"made": {"r1": [[1, 2, 3], [2, 3, 4]], "miou": [[0.1, 0.2, 0.3]]},
                           "made-plus": {"r1": [[2, 3, 4]], "miou": [[0.3, 0.5, 0.6]]}},
              "18 epochs": {"made": {"r1": [[1, 2, 3, 4]]}}}
    width, height = png_size(plot_comparison(curves, tmp_path / "regime.png", "a regime"))
    assert width > height > 100
