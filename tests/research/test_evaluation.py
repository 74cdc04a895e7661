"""The benchmark protocol (`evaluate_model`, `evaluate`, `evaluate_prior`) and `mgsv eval`."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _datagen import make_dataset

from mgsv_cli.cli import main
from mgsv_cli.models import metrics
from mgsv_cli.models.checkpoint import build_untrained, save_checkpoint
from mgsv_cli.research.dataset import load_split
from mgsv_cli.research.evaluation import RESULT_KEYS, evaluate, evaluate_model, evaluate_prior

# ../shared beside the checkout
REAL_VAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "MGSV-EC" / "val_data.csv"
N_VAL = 40


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models run faster on one thread, and much faster when other processes share the CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("eval") / "root", n_tracks=12, n_train=30, n_val=N_VAL,
                        n_test=20, seed=1)


@pytest.fixture(scope="module")
def tiny():
    model, variant = build_untrained(config="tiny", seed=0)
    return model, variant


def _run_cli(args, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def test_untrained_model_gives_all_keys_in_range(dataset, tiny):
    model, _ = tiny
    result = evaluate_model(model, load_split(dataset.root, "val"), "cpu", batch_size=16)
    assert set(RESULT_KEYS) <= set(result)
    assert result["split"] == "val" and result["n"] == N_VAL
    assert result["n_tracks"] == N_VAL  # one track per val video, as in the release
    for key in ("miou", "miou_cut"):
        assert 0.0 <= result[key] <= 1.0
    step = 100.0 / N_VAL  # every percentage counts whole videos
    for key in RESULT_KEYS[3:]:
        if key != "miou_cut":
            assert 0.0 <= result[key] <= 100.0
            assert result[key] / step == pytest.approx(round(result[key] / step))
    assert result["r1"] <= result["r5"] <= result["r10"]
    assert result["mor1"] <= result["mor10"] <= result["mor100"]
    assert result["mor1"] <= result["r1"] and result["mor10"] <= result["r10"]
    assert model.training is False


def test_protocol_matches_a_one_video_at_a_time_reference(dataset, tiny):
    """Blocked, batched scoring equals encoding every track and video alone and scoring each video."""
    model, _ = tiny
    split = load_split(dataset.root, "test")
    result = evaluate_model(model, split, "cpu", batch_size=5)  # ragged blocks of videos and tracks
    labels = split.labels

    def tensor(array, dtype):
        return torch.from_numpy(np.array(array, dtype=dtype))

    with torch.inference_mode():
        tracks = [model.encode_music(tensor(split.track_feats[t:t + 1], np.float32),
                                     tensor(split.track_masks[t:t + 1], bool)) for t in range(split.n_tracks)]
        scores = np.zeros((split.n, split.n_tracks))
        moments = np.zeros((split.n, 2))
        for row in range(split.n):
            v = split.video_index[row]
            video = model.encode_video(tensor(split.video_feats[v:v + 1], np.float32),
                                       tensor(split.video_masks[v:v + 1], bool))
            for t, track in enumerate(tracks):
                scores[row, t] = model.score_pairs(video, track).item()
            spans = model.detect(video, tracks[split.track_index[row]])
            duration = torch.tensor([labels.music_total_duration[row]], dtype=torch.float32)
            moments[row] = model.spans_to_seconds(spans, duration)[0].numpy()
    ranks = metrics.gt_ranks(scores, split.track_index)
    ious = metrics.temporal_iou(moments, labels.moments)
    assert result["n"] == 20 and result["n_tracks"] == split.n_tracks
    assert result["miou"] == pytest.approx(ious.mean(), abs=1e-5)
    assert [result[f"r{k}"] for k in (1, 5, 10)] == list(metrics.recall_at_k(ranks).values())
    assert [result[f"mor{k}"] for k in (1, 10, 100)] == list(metrics.moment_recall_at_k(ranks, ious).values())
    cut = np.stack(metrics.duration_exact_cut(moments[:, 0], moments[:, 1], labels.video_segment_duration,
                                              labels.music_total_duration), 1)
    assert result["miou_cut"] == pytest.approx(metrics.mean_iou(cut, labels.moments), abs=1e-5)


def test_batch_size_does_not_change_results(dataset, tiny):
    model, _ = tiny
    split = load_split(dataset.root, "val")
    small = evaluate_model(model, split, "cpu", batch_size=7)
    large = evaluate_model(model, split, "cpu", batch_size=1000)
    for key in RESULT_KEYS[2:]:
        assert small[key] == pytest.approx(large[key], abs=1e-5)


def test_evaluate_loads_a_checkpoint_and_counts_parameters(dataset, tiny, tmp_path):
    model, variant = tiny
    run = tmp_path / "run"
    save_checkpoint(run, model, variant, {"epoch": 1})
    result = evaluate(dataset.root, "val", checkpoint=run, device="cpu", batch_size=16)
    direct = evaluate_model(model, load_split(dataset.root, "val"), "cpu", batch_size=16)
    for key in RESULT_KEYS[2:]:
        assert result[key] == pytest.approx(direct[key], abs=1e-6)
    assert result["params"] == model.parameter_counts()
    assert result["params"]["total"] == sum(p.numel() for n, p in model.named_parameters() if n != "logit_scale")
    assert result["checkpoint"].endswith("model.safetensors")


def test_cli_eval_json_and_table(dataset, tiny, tmp_path, capsys):
    model, variant = tiny
    run = tmp_path / "run"
    save_checkpoint(run, model, variant, {"epoch": 1})
    code, out, _ = _run_cli(["eval", "--data", dataset.root, "--split", "val", "--checkpoint", run,
                             "--device", "cpu", "--batch-size", "16", "--json"], capsys)
    assert code == 0
    result = json.loads(out)
    assert set(result) == set(RESULT_KEYS) and result["n"] == N_VAL and result["split"] == "val"
    code, out, _ = _run_cli(["eval", "--data", dataset.root, "--split", "val", "--checkpoint", run,
                             "--device", "cpu"], capsys)
    assert code == 0
    assert "exact-length cut" in out and "MaDe (paper, test)" in out and "0.722" in out
    assert f"{result['miou']:.3f}" in out


def test_cli_eval_writes_plots_that_agree_with_the_numbers(dataset, tiny, tmp_path, capsys):
    model, variant = tiny
    run = tmp_path / "run"
    save_checkpoint(run, model, variant, {"epoch": 1})
    plots = tmp_path / "plots"
    code, out, _ = _run_cli(["eval", "--data", dataset.root, "--split", "val", "--checkpoint", run,
                             "--device", "cpu", "--batch-size", "16", "--plots", plots], capsys)
    assert code == 0 and f"plots: {plots}" in " ".join(out.split())
    for name in ("iou_histogram.png", "recall_at_k.png"):
        assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    direct = evaluate_model(model, load_split(dataset.root, "val"), "cpu", batch_size=16)
    rows = (plots / "per_category.csv").read_text().splitlines()
    header, everyone = rows[0].split(","), dict(zip(rows[0].split(","), rows[-1].split(",")))
    assert header[:3] == ["category", "n", "miou"] and everyone["category"] == "all"
    assert int(everyone["n"]) == N_VAL
    assert float(everyone["miou"]) == pytest.approx(direct["miou"], abs=1e-6)
    assert float(everyone["r5"]) == pytest.approx(direct["r5"], abs=1e-6)
    assert float(everyone["mor1"]) == pytest.approx(direct["mor1"], abs=1e-6)
    # A plots "folder" that is a file: one line, the storage exit code.
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, _, err = _run_cli(["eval", "--data", dataset.root, "--split", "val", "--checkpoint", run,
                             "--device", "cpu", "--plots", blocker / "plots"], capsys)
    assert code == 5 and "Traceback" not in err and len([line for line in err.splitlines() if line.strip()]) == 1


def test_prior_matches_a_hand_computation(dataset):
    rows = dataset.rows["test"]
    result = evaluate_prior(dataset.root, "test")
    ious = []
    for r in rows:
        end = min(r["video_segment_duration"], r["music_total_duration"])
        inter = max(0.0, min(end, r["music_end"]) - max(0.0, r["music_start"]))
        union = max(end, r["music_end"]) - min(0.0, r["music_start"])
        ious.append(inter / union)
    assert result["miou"] == pytest.approx(np.mean(ious)) and result["miou_cut"] == result["miou"]
    assert result["n"] == len(rows)
    assert all(result[k] is None for k in ("r1", "r5", "r10", "mor1", "mor10", "mor100"))


def test_prior_needs_no_features(dataset, tmp_path):
    labels_only = tmp_path / "labels" / "dataset" / "MGSV-EC"
    labels_only.mkdir(parents=True)
    (labels_only / "val_data.csv").write_bytes((dataset.root / "dataset" / "MGSV-EC" / "val_data.csv").read_bytes())
    assert evaluate_prior(tmp_path / "labels", "val")["n"] == N_VAL


@pytest.mark.skipif(not REAL_VAL.is_file(), reason="MGSV-EC val labels not present")
def test_prior_on_real_val_is_0_484(capsys):
    code, out, _ = _run_cli(["eval", "--data", REAL_VAL.parent.parent, "--split", "val",
                             "--baseline", "prior", "--json"], capsys)
    assert code == 0
    result = json.loads(out)
    assert round(result["miou"], 3) == 0.484 and result["n"] == 2000
    assert result["r1"] is None and result["mor100_cut"] is None and result["miou_cut"] == result["miou"]


def test_cli_bad_root_is_one_line_without_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mgsv_cli", "eval", "--data", "nope", "--split", "val",
                           "--baseline", "prior"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 4
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "nope" in lines[0] and "Traceback" not in done.stderr


@pytest.mark.parametrize("args, code, message", [
    (["--split", "val", "--baseline", "median"], 2, "only baseline is 'prior'"),
    (["--split", "dev", "--baseline", "prior"], 2, "expected val or test"),
    (["--split", "val"], 6, "no trained checkpoint found"),
    (["--split", "val", "--baseline", "prior", "--plots", "p"], 2, "--baseline prior has none"),
])
def test_cli_usage_errors(dataset, capsys, args, code, message):
    got, _, err = _run_cli(["eval", "--data", dataset.root, *args], capsys)
    assert got == code and message in " ".join(err.split())
