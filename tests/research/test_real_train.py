"""ReAL through mgsv: `train --config real-tiny` (two stages), `eval`, `suggest`, stages, resume, family errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _library_helpers import CLIP_SECONDS, run_cli
from safetensors.torch import load_file

from mgsv_cli.errors import UsageError
from mgsv_cli.models.checkpoint import build_untrained, load_model, read_metadata, save_checkpoint
from mgsv_cli.models.variants import load_config, replace_train
from mgsv_cli.research.evaluation import evaluate, evaluate_prior
from mgsv_cli.research.train import train

pytest_plugins = ["_library_helpers"]  # media, tiny encoders and an index of generated tracks


def real_tiny(**changes):
    return replace_train(load_config("real-tiny"), **changes)


def test_cli_trains_both_stages_then_evaluates(capsys, dataset, tmp_path):
    run = tmp_path / "run"
    trained = run_cli(capsys, "train", "--data", dataset.root, "--config", "real-tiny", "--epochs", "2",
                      "--device", "cpu", "--out", run)
    assert trained.code == 0, trained.err
    assert "retrieval" in trained.out and "localisation" in trained.out  # both stages ran, counts printed
    assert json.loads(read_metadata(run / "model.safetensors")["mgsv_config"])["family"] == "real"
    names = load_file(str(run / "model.safetensors")).keys()
    assert any(n.startswith("retrieval.") for n in names) and any(n.startswith("localisation.") for n in names)
    stages = json.loads((run / "metrics.json").read_text())["stages"]
    assert set(stages) == {"retrieval", "localisation"}
    # curves: each stage's tags under its name (each has its own steps), a PNG per stage
    from mgsv_cli.research.curves import read_scalars

    scalars = read_scalars(run)
    for stage in ("retrieval", "localisation"):
        assert (run / f"curves-{stage}.png").read_bytes()[:4] == b"\x89PNG"
        assert len(scalars[f"{stage}/val/r1"]) == 2 and len(scalars[f"{stage}/val/miou"]) == 2
        assert {f"{stage}/train/loss", f"{stage}/train/lr"} <= set(scalars)

    evaluated = run_cli(capsys, "eval", "--data", dataset.root, "--split", "test", "--checkpoint", run,
                        "--device", "cpu", "--json")
    assert evaluated.code == 0, evaluated.err
    result = json.loads(evaluated.out)
    assert {"miou", "r1", "r5", "r10", "mor1", "mor10", "mor100", "miou_cut"} <= set(result)
    assert result["n"] == len(dataset.rows["test"])


def test_real_learns_the_planted_signal(dataset, tmp_path):
    """Retrieval ranks the right track far above chance; Music-DETR beats the content-free prior."""
    run = tmp_path / "run"
    result = train(dataset.root, real_tiny(retrieval_epochs=2, localisation_epochs=15, batch_size=16),
                   out_dir=run, device="cpu")
    losses = [r["train_loss"] for r in result.history if r["stage"] == "localisation"]
    assert losses[-1] < 0.5 * losses[0], losses
    test = evaluate(dataset.root, "test", run, device="cpu")
    prior = evaluate_prior(dataset.root, "test")
    assert set(test["params"]) == {"retrieval", "localisation", "total"}
    chance_r1 = 100.0 / test["n_tracks"]
    assert test["r1"] > 3 * chance_r1, test
    assert test["miou"] > prior["miou"] + 0.1, (test, prior)

    # one stage on an existing run continues it: the other stage's weights stay as they were
    before = load_file(str(run / "model.safetensors"))
    again = train(dataset.root, real_tiny(epochs=1), out_dir=run, device="cpu", stage="localisation")
    after = load_file(str(run / "model.safetensors"))
    assert [r["stage"] for r in again.history] == ["localisation"]
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("retrieval."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("localisation."))


def test_resume_continues_the_unfinished_stage(dataset, tmp_path):
    run = tmp_path / "run"
    train(dataset.root, real_tiny(epochs=1), out_dir=run, device="cpu")
    resumed = train(dataset.root, real_tiny(), out_dir=run, device="cpu", resume=True, asked={"epochs": 2})
    assert [(r["stage"], r["epoch"]) for r in resumed.history] == [
        ("retrieval", 1), ("localisation", 1), ("localisation", 2)]
    with pytest.raises(UsageError, match="already finished"):
        train(dataset.root, real_tiny(), out_dir=run, device="cpu", resume=True, asked={})


def _untrained_run(folder: Path, config: str) -> Path:
    model, variant = build_untrained(config=config)
    save_checkpoint(folder, model, variant, {})
    return folder


def test_family_mismatches_are_one_line_errors(capsys, dataset, tmp_path):
    made_run = _untrained_run(tmp_path / "made", "tiny")
    real_run = _untrained_run(tmp_path / "real", "real-tiny")
    cases = [
        (["--config", "real-tiny", "--stage", "localisation", "--out", made_run], "is a MaDe"),
        (["--config", "tiny", "--resume", "--out", real_run], "is a ReAL run"),
        (["--config", "tiny", "--stage", "retrieval", "--out", tmp_path / "new"], "--stage retrieval is for ReAL"),
    ]
    for args, message in cases:
        result = run_cli(capsys, "train", "--data", dataset.root, "--device", "cpu", *args)
        assert result.code != 0 and message in result.err, result.err
        assert "Traceback" not in result.err and len(result.err.strip().splitlines()) <= 3
    assert not (tmp_path / "new").exists()


def test_suggest_with_a_real_checkpoint(capsys, media_src, built, tiny_encoders, tmp_path):
    """Retrieve, then localise the top K with Music-DETR, on an index of generated tracks."""
    model, variant = build_untrained(video_dim=tiny_encoders.video_dim, music_dim=tiny_encoders.music_dim,
                                     config="real-tiny", seed=5)
    save_checkpoint(tmp_path / "run", model, variant, {})
    clip = media_src / "clips" / "clip0.mp4"
    result = run_cli(capsys, "suggest", clip, "--index", built[1], "--checkpoint", tmp_path / "run", "--json",
                     "--top", "2", "--device", "cpu")
    assert result.code == 0, result.err
    [obj] = [json.loads(line) for line in result.out.splitlines() if line.strip()]
    suggestions = obj["suggestions"]
    assert len(suggestions) == 2 and suggestions[0]["score"] >= suggestions[1]["score"]
    for s in suggestions:
        assert s["end"] - s["start"] == pytest.approx(CLIP_SECONDS[0], abs=0.05)  # the tracks are longer
    loaded, _, _ = load_model(tmp_path / "run")
    assert type(loaded).__name__ == "Real"
