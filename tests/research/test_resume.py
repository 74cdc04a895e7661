"""`mgsv train --resume` with flags: a larger --epochs continues to that many epochs; any other
flag that disagrees with the saved run is a clear error, never silently ignored."""
from __future__ import annotations

import json

import pytest
from _library_helpers import run


def train_args(dataset, run_dir, *extra):
    return ("train", "--data", str(dataset.root), "--device", "cpu", "--out", str(run_dir), *extra)


def test_resume_with_more_epochs_continues_to_that_many(capsys, dataset, tmp_path):
    run_dir = tmp_path / "run"
    code, _, err = run(capsys, *train_args(dataset, run_dir, "--config", "tiny", "--epochs", "1", "--batch-size", "32"))
    assert code == 0, err
    assert json.loads((run_dir / "state.json").read_text())["epochs_done"] == 1

    code, _, err = run(capsys, *train_args(dataset, run_dir, "--resume", "--epochs", "3"))
    assert code == 0, err
    assert json.loads((run_dir / "state.json").read_text())["epochs_done"] == 3
    assert json.loads((run_dir / "config.json").read_text())["train"]["epochs"] == 3
    assert len(json.loads((run_dir / "state.json").read_text())["history"]) == 3

    # finished: resuming again without a larger --epochs says so instead of exiting 0 having done nothing
    code, _, err = run(capsys, *train_args(dataset, run_dir, "--resume"))
    assert code == 2 and "already finished its 3 epochs" in err and "--epochs" in err
    code, _, err = run(capsys, *train_args(dataset, run_dir, "--resume", "--epochs", "2"))
    assert code == 2 and "already finished 3 epochs" in err


@pytest.mark.parametrize("flag, value", [("--lr", "0.01"), ("--batch-size", "16"), ("--seed", "9"),
                                         ("--precision", "bf16"), ("--config", "made")])
def test_resume_refuses_flags_that_conflict_with_the_saved_run(capsys, dataset, tmp_path, flag, value):
    run_dir = tmp_path / "run"
    code, _, err = run(capsys, *train_args(dataset, run_dir, "--config", "tiny", "--epochs", "1", "--batch-size", "32"))
    assert code == 0, err
    before = (run_dir / "last.safetensors").read_bytes()
    code, _, err = run(capsys, *train_args(dataset, run_dir, "--resume", "--epochs", "2", flag, value))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert (flag in err) and ("new run" in err)
    assert (run_dir / "last.safetensors").read_bytes() == before  # nothing was trained or overwritten


def test_resume_accepts_flags_equal_to_the_saved_run(capsys, dataset, tmp_path):
    run_dir = tmp_path / "run"
    code, _, err = run(capsys, *train_args(dataset, run_dir, "--config", "tiny", "--epochs", "1", "--batch-size", "32"))
    assert code == 0, err
    code, _, err = run(capsys, *train_args(dataset, run_dir, "--resume", "--epochs", "2", "--batch-size", "32",
                                           "--config", "tiny"))
    assert code == 0, err
    assert json.loads((run_dir / "state.json").read_text())["epochs_done"] == 2
