"""Training on generated MGSV-EC-layout data: it must learn, resume exactly and never clobber a run."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _datagen import make_dataset
from safetensors.torch import load_file

from mgsv_cli.errors import UsageError
from mgsv_cli.models.variants import load_config, replace_train
from mgsv_cli.research.train import Reporter, learning_rate, selection_score, train


def run_cli(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {"MGSV_HOME": str(home), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path.cwd())}
    return subprocess.run([sys.executable, "-m", "mgsv_cli", *args], capture_output=True, text=True, env=env,
                          timeout=900)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("mgsv-ec")
    # Shaped like the release: each test video has its own track, most of them (85%) train tracks,
    # so the test split must be no larger than the train catalogue (40 tracks).
    return make_dataset(root, n_tracks=40, n_train=480, n_val=40, n_test=40, seed=7)


def test_schedule_warms_up_linearly_then_decays_to_zero():
    total, base = 1000, 3e-4
    assert learning_rate(0, total, base, 0.02) == pytest.approx(base / 20)
    assert learning_rate(19, total, base, 0.02) == pytest.approx(base)
    assert learning_rate(510, total, base, 0.02) == pytest.approx(base / 2, rel=1e-2)
    assert learning_rate(999, total, base, 0.02) < base * 1e-4


def test_training_learns_the_planted_signal_and_beats_the_prior(dataset, isolated_home):
    """The whole CLI path: train a tiny MaDe, then eval on held-out test videos against the prior."""
    run = isolated_home / "run"
    trained = run_cli("train", "--data", str(dataset.root), "--config", "tiny", "--epochs", "12",
                      "--device", "cpu", "--out", str(run), home=isolated_home)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "Traceback" not in trained.stderr
    assert (run / "model.safetensors").is_file() and (run / "train.log").is_file()
    assert "enhancement" in trained.stdout  # parameter counts are printed
    # ... and what `mgsv suggest` will need to use the checkpoint (rich may wrap the line).
    assert "will rank music indexed with the pretrained encoders" in " ".join(trained.stdout.split())

    model_eval = run_cli("eval", "--data", str(dataset.root), "--split", "test", "--checkpoint", str(run),
                         "--device", "cpu", "--json", home=isolated_home)
    prior_eval = run_cli("eval", "--data", str(dataset.root), "--split", "test", "--baseline", "prior", "--json",
                         home=isolated_home)
    assert model_eval.returncode == 0 and prior_eval.returncode == 0, model_eval.stderr[-2000:]
    model, prior = json.loads(model_eval.stdout), json.loads(prior_eval.stdout)
    n_tracks = len({row["music_id"] for row in dataset.rows["test"]})
    chance_r1 = 100.0 / n_tracks
    assert model["miou"] > prior["miou"] + 0.15, (model, prior)
    assert model["r1"] > 3 * chance_r1, (model, chance_r1)
    assert model["miou_cut"] >= model["miou"] - 0.02  # the exact-length cut is no worse than the raw span

    top1_fp32, moments_fp32 = predict_test_split(dataset.root, run, torch.float32)
    top1_bf16, moments_bf16 = predict_test_split(dataset.root, run, torch.bfloat16)
    assert (top1_fp32 == top1_bf16).float().mean() >= 0.97
    assert (moments_fp32 - moments_bf16).abs().max() <= 0.5  # seconds


@torch.no_grad()
def predict_test_split(root, run, dtype):
    """Top-1 track of every test video and the moment on its GT track, with the weights in ``dtype``.

    What ``evaluate_model(..., dtype=dtype)`` does: the whole model cast to ``dtype`` (the span
    head computes in float32 from its cast weights); its moments are bit-identical to these.
    """
    from mgsv_cli.models.checkpoint import load_model
    from mgsv_cli.research.dataset import load_split

    model, _, _ = load_model(run)
    model = model.to(dtype)
    split = load_split(root, "test")
    batch = split.batch(range(split.n))
    tracks = split.batch(range(split.n), dedupe_tracks=True)
    video = model.encode_video(batch.frames, batch.frame_mask)
    music = model.encode_music(tracks.windows, tracks.window_mask)
    top1 = model.score_pairs(video, music).argmax(0)
    own = music.take(tracks.track_slot)
    moments = model.spans_to_seconds(model.detect(video, own).float(), batch.track_duration)
    return top1, moments


def tiny_variant(epochs: int):
    return replace_train(load_config("tiny"), epochs=epochs, batch_size=64)


class StopAfterFirstEpoch(Reporter):
    def end_epoch(self, epoch, train_loss, metrics, is_best):
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C once the epoch was saved


def test_resume_continues_exactly(dataset, tmp_path):
    straight = train(dataset.root, tiny_variant(2), out_dir=tmp_path / "straight", device="cpu")
    with pytest.raises(KeyboardInterrupt):
        train(dataset.root, tiny_variant(2), out_dir=tmp_path / "resumed", device="cpu",
              reporter=StopAfterFirstEpoch())
    resumed = train(dataset.root, tiny_variant(2), out_dir=tmp_path / "resumed", device="cpu", resume=True)
    a = load_file(str(straight.run_dir / "last.safetensors"))
    b = load_file(str(resumed.run_dir / "last.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [r["train_loss"] for r in straight.history] == [r["train_loss"] for r in resumed.history]


def test_an_existing_run_is_never_overwritten(dataset, tmp_path):
    train(dataset.root, tiny_variant(1), out_dir=tmp_path / "run", device="cpu")
    before = (tmp_path / "run" / "model.safetensors").read_bytes()
    with pytest.raises(UsageError, match="--resume"):
        train(dataset.root, tiny_variant(1), out_dir=tmp_path / "run", device="cpu")
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == before


def test_selection_score_is_the_mean_of_the_paper_numbers():
    metrics = {"miou": 0.7, "r1": 7.0, "r5": 70.0, "r10": 70.0, "mor1": 70.0, "mor10": 70.0, "mor100": 133.0}
    assert selection_score(metrics) == pytest.approx(70.0)


def test_bad_data_root_is_one_clear_line(tmp_path, isolated_home):
    result = run_cli("train", "--data", str(tmp_path / "missing"), "--config", "tiny", "--device", "cpu",
                     home=isolated_home)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "error" in result.stderr.lower()
