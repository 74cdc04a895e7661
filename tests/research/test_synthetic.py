"""`mgsv data synth` / mgsv_cli.research.synthetic: a small MGSV-EC-shaped dataset with a planted signal."""

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from mgsv_cli.cli import main
from mgsv_cli.errors import StorageError, UsageError
from mgsv_cli.research import synthetic
from mgsv_cli.research.dataset import (
    CSV_COLUMNS,
    FEATURE_DIRS,
    SPLITS,
    csv_path,
    feature_path,
    load_split,
    read_split_csv,
)
from mgsv_cli.research.evaluation import evaluate_prior


def run_cli(args, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes), and every folder (-> b"<dir>")."""
    return {str(p.relative_to(root)): (b"<dir>" if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def default_root(tmp_path_factory) -> Path:
    """``mgsv data synth ROOT`` at the default size (800 videos, 40 train tracks, seed 0), in process."""
    root = tmp_path_factory.mktemp("synth") / "mgsv-synth"
    with pytest.raises(SystemExit) as info:
        main(["data", "synth", str(root)])
    assert info.value.code in (0, None)
    return root


def music_ids(root: Path, split: str) -> list[str]:
    return read_split_csv(root, split).music_id.tolist()


# ------------------------------------------------------------------ layout


def test_cli_prints_a_summary_and_the_next_commands(tmp_path, capsys):
    root = tmp_path / "small"
    code, out, err = run_cli(["data", "synth", root, "--videos", "60", "--tracks", "8", "--seed", "2"], capsys)
    assert code == 0, err
    text = " ".join(out.split())
    assert "train 48, val 6, test 6 videos" in text and "8 of them in train" in text and "seed 2" in text
    assert f"mgsv train --data {root} --config tiny --epochs 5" in text
    assert f"mgsv eval --data {root} --split test" in text


def test_writes_the_release_layout_readable_by_load_split(default_root):
    for split in SPLITS:
        with open(csv_path(default_root, split), newline="", encoding="utf-8") as handle:
            assert next(csv.reader(handle)) == list(CSV_COLUMNS)
    sizes = {split: load_split(default_root, split) for split in SPLITS}
    assert {split: data.n for split, data in sizes.items()} == {"train": 640, "val": 80, "test": 80}
    for data in sizes.values():
        assert data.video_feats.shape[1:] == (50, 512) and data.track_feats.shape[1:] == (96, 768)
        assert data.meta["video_fp16_exact"] is True
    assert sorted(p.name for p in default_root.iterdir()) == ["dataset", "features"]  # no staging folder left
    row = read_split_csv(default_root, "val")
    expected = {"video": ((50, 512), row.video_id[0]), "video_mask": ((50,), row.video_id[0]),
                "music": ((96, 768), row.music_id[0]), "music_mask": ((96,), row.music_id[0])}
    for kind, (shape, item) in expected.items():
        tensor = torch.load(feature_path(default_root, kind, item), map_location="cpu", weights_only=True)
        assert isinstance(tensor, torch.Tensor) and tuple(tensor.shape) == shape


def test_train_tracks_are_shared_under_one_id_with_a_long_tail(default_root):
    counts = Counter(music_ids(default_root, "train"))
    assert len(counts) == 40  # --tracks: every train track has at least one video
    per_track = np.array(sorted(counts.values()))
    assert per_track.max() >= 5 * np.median(per_track), per_track  # a few tracks serve many videos
    assert per_track.min() >= 1
    # One feature file per music id, whatever the number of its videos.
    all_ids = {m for split in SPLITS for m in music_ids(default_root, split)}
    for kind in ("music", "music_mask"):
        files = {p.stem for p in (default_root / FEATURE_DIRS[kind]).iterdir()}
        assert files == all_ids
    video_files = {p.stem for p in (default_root / FEATURE_DIRS["video"]).iterdir()}
    assert len(video_files) == 800


def test_val_and_test_have_one_distinct_track_per_video(default_root):
    train_ids = set(music_ids(default_root, "train"))
    for split in ("val", "test"):
        ids = music_ids(default_root, split)
        assert len(set(ids)) == len(ids) == 80
        seen = sum(m in train_ids for m in ids)
        # Like the release, most are train tracks (at most one video each), the rest new tracks.
        assert 0 < seen < len(ids) and seen == min(40, round(synthetic.SHARED_FRACTION * len(ids)))
        split_data = load_split(default_root, split)
        assert split_data.n_tracks == split_data.n


def test_the_same_seed_writes_the_same_dataset(default_root, tmp_path):
    again = synthetic.make_dataset(tmp_path / "again", seed=0)
    for split in SPLITS:
        assert csv_path(again.root, split).read_bytes() == csv_path(default_root, split).read_bytes()
    for row in again.rows["test"][:5] + again.rows["train"][:5]:
        for kind, item in (("video", row["video_id"]), ("music", row["music_id"]), ("music_mask", row["music_id"])):
            a = torch.load(feature_path(again.root, kind, item), weights_only=True)
            b = torch.load(feature_path(default_root, kind, item), weights_only=True)
            assert torch.equal(a, b)
    other = synthetic.make_dataset(tmp_path / "other", seed=1)
    assert csv_path(other.root, "train").read_bytes() != csv_path(default_root, "train").read_bytes()


def test_the_moment_is_findable_from_the_music_content(tmp_path):
    """The windows whose code matches the video's start at the GT music_start (within one window stride).

    Only the written features are used, decoded with the planted projections (what a
    model has to learn): the video's code from its frames, each window's code from the
    track's file, which every video of the track shares.
    """
    info = synthetic.make_dataset(tmp_path / "root", n_videos=300, n_tracks=20, seed=5)
    proj = info.projections
    dim = synthetic.STYLE_DIM  # least squares on [style, code]; keep the code part
    video_decoder = np.linalg.pinv(np.concatenate([proj["video_style"], proj["video_code"]], axis=1))[dim:]
    music_decoder = np.linalg.pinv(np.concatenate([proj["music_style"], proj["music_code"]], axis=1))[dim:]
    train_ids = set(info.split_track_ids("train"))
    found = {"train": [], "seen": [], "new": []}
    for split in SPLITS:
        data = load_split(info.root, split)
        for row in range(data.n):
            video = data.video_index[row]
            frames = data.video_feats[video].astype(np.float32)[data.video_masks[video].astype(bool)]
            code = video_decoder @ frames.mean(0)
            track = data.track_index[row]
            valid = data.track_masks[track].astype(bool)
            window_codes = data.track_feats[track][valid] @ music_decoder.T
            norms = np.linalg.norm(window_codes, axis=1)
            code_norm = np.linalg.norm(code)
            matches = (window_codes @ code / (norms * code_norm) > 0.8) & (norms > 0.5 * code_norm)
            runs = np.flatnonzero(matches[:-1] & matches[1:])  # a section spans >= 2 windows; noise does not
            start = synthetic.WINDOW_HOP * runs[0] if runs.size else np.inf
            ok = 0.0 <= start - data.labels.music_start[row] < synthetic.WINDOW_HOP
            kind = "train" if split == "train" else ("seen" if data.labels.music_id[row] in train_ids else "new")
            found[kind].append(ok)
    assert all(len(v) > 5 for v in found.values())
    for kind, hits in found.items():
        assert np.mean(hits) >= 0.98, (kind, np.mean(hits))


def test_sections_belong_to_the_track_not_to_a_video(tmp_path):
    """Videos of one section share its start but not its length: nothing marks a video's end."""
    info = synthetic.make_dataset(tmp_path / "root", n_videos=200, n_tracks=10, seed=3)
    by_section = Counter((r["music_id"], r["music_start"]) for r in info.rows["train"])
    (music_id, start), n = by_section.most_common(1)[0]
    assert n >= 5
    lengths = {r["video_segment_duration"] for r in info.rows["train"]
               if (r["music_id"], r["music_start"]) == (music_id, start)}
    assert len(lengths) > 1
    track = info.track(music_id)
    section = track.section_starts.index(start)
    assert all(start + length <= track.section_ends[section] + 1e-6 for length in lengths)


# ------------------------------------------------------------------ refusals


def test_a_root_holding_a_dataset_is_refused_and_left_unchanged(default_root, capsys):
    before = snapshot(default_root)
    code, out, err = run_cli(["data", "synth", default_root, "--seed", "9"], capsys)
    assert code == UsageError.exit_code and out == ""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "already holds a dataset" in lines[0] and "Traceback" not in err
    assert snapshot(default_root) == before


def test_a_features_folder_with_files_is_refused(tmp_path, capsys):
    root = tmp_path / "root"
    precious = root / "features" / "notes.txt"
    precious.parent.mkdir(parents=True)
    precious.write_text("mine")
    before = snapshot(root)
    code, _, err = run_cli(["data", "synth", root], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "feature files" in err
    assert snapshot(root) == before


def test_an_empty_root_with_other_files_is_fine(tmp_path):
    root = tmp_path / "root"
    (root / "features").mkdir(parents=True)  # empty: nothing to lose
    (root / "README").write_text("keep me")
    info = synthetic.make_dataset(root, n_videos=20, n_tracks=4)
    assert (root / "README").read_text() == "keep me" and info.sizes == {"train": 16, "val": 2, "test": 2}


@pytest.mark.parametrize("args, message", [
    (["--videos", "5"], "--videos 5: expected 10 to"),
    (["--tracks", "1"], "--tracks 1: expected 2 to"),
    (["--videos", "20", "--tracks", "17"], "fewer than the 17 train tracks"),
    (["--videos", "1000000"], "--videos 1000000"),
])
def test_bad_sizes_are_one_line_and_write_nothing(tmp_path, capsys, args, message):
    root = tmp_path / "root"
    code, _, err = run_cli(["data", "synth", root, *args], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in " ".join(err.split())
    assert not root.exists()


def test_a_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    root = tmp_path / "root"
    root.mkdir()
    (root / "README").write_text("keep me")
    real_save, calls = torch.save, []

    def flaky_save(obj, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 50:
            raise OSError(28, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", flaky_save)
    with pytest.raises(StorageError, match="no space left"):
        synthetic.make_dataset(root, n_videos=40, n_tracks=5)
    assert sorted(p.name for p in root.iterdir()) == ["README"]


# ------------------------------------------------------------------ the next commands


def test_synth_then_eval_prior(default_root, capsys):
    code, out, err = run_cli(["eval", "--data", default_root, "--split", "test", "--baseline", "prior", "--json"],
                             capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["n"] == 80 and 0.0 < result["miou"] < 1.0
    assert result["miou"] == pytest.approx(evaluate_prior(default_root, "test")["miou"])
    assert result["miou"] < 0.5  # sections start all over the track: [0, video duration] is a weak guess


# ------------------------------------------------------------------ harder data (bench_quality)


def _mean_style_cosine(root: Path, info_seed: int, style_noise: float) -> float:
    """Mean cosine between each train video's frame mean and its track's planted style direction."""
    info = synthetic.make_dataset(root, n_videos=60, n_tracks=6, seed=info_seed, style_noise=style_noise)
    proj = info.projections["video_style"]
    cosines = []
    for row in info.rows["train"]:
        frames = torch.load(feature_path(root, "video", row["video_id"]), weights_only=True).numpy()
        mask = torch.load(feature_path(root, "video_mask", row["video_id"]), weights_only=True).numpy() > 0
        style = proj @ info.track(row["music_id"]).style
        mean = frames[mask].mean(0)
        cosines.append(float(mean @ style / np.linalg.norm(mean) / np.linalg.norm(style)))
    return float(np.mean(cosines))


def test_style_noise_makes_videos_stray_from_their_track(tmp_path):
    assert _mean_style_cosine(tmp_path / "hard", 4, 1.5) < _mean_style_cosine(tmp_path / "easy", 4, 0.3) - 0.05


def test_cli_noise_options_change_the_videos_only(tmp_path, capsys):
    args = ["--videos", "40", "--tracks", "5", "--seed", "3"]
    assert run_cli(["data", "synth", tmp_path / "a", *args], capsys)[0] == 0
    assert run_cli(["data", "synth", tmp_path / "b", *args, "--style-noise", "1.5"], capsys)[0] == 0
    a, b = snapshot(tmp_path / "a"), snapshot(tmp_path / "b")
    assert a.keys() == b.keys()
    changed = {path for path in a if a[path] != b[path]}
    assert changed and all(path.startswith(FEATURE_DIRS["video"] + "/") for path in changed)  # frames only
    code, out, err = run_cli(["data", "synth", tmp_path / "c", *args, "--noise", "-1"], capsys)
    assert code == UsageError.exit_code and "noise" in err and "Traceback" not in err


# ------------------------------------------------------------------ regimes (bench_quality, issue 24)


def test_per_pair_ids_give_every_train_video_its_own_track(tmp_path):
    info = synthetic.make_dataset(tmp_path / "root", n_videos=60, n_val=10, n_test=10, seed=2, per_pair_ids=True)
    train_ids = [r["music_id"] for r in info.rows["train"]]
    assert len(train_ids) == len(set(train_ids)) == 40 and info.per_pair_ids
    for split in ("val", "test"):  # as before: one track per video, most of them train tracks
        ids = info.split_track_ids(split)
        assert len(ids) == 10 and len(set(ids) & set(train_ids)) >= 7


def _code_cosines(root: Path, link_dims: int) -> tuple[float, float]:
    """Mean |cosine| of each train video's recovered code with its section's code, on the linked
    dimensions and on the others (the planted projections are known, so least squares recovers it)."""
    info = synthetic.make_dataset(root, n_videos=80, n_tracks=8, seed=6, noise=0.05, style_noise=0.0,
                                  link_dims=link_dims, style_scale=0.0)
    basis = info.projections["video_code"]
    linked, unlinked = [], []
    for row in info.rows["train"]:
        frames = torch.load(feature_path(root, "video", row["video_id"]), weights_only=True).numpy()
        mask = torch.load(feature_path(root, "video_mask", row["video_id"]), weights_only=True).numpy() > 0
        code = np.linalg.lstsq(basis, frames[mask].mean(0), rcond=None)[0]
        track = info.track(row["music_id"])
        truth = track.section_codes[track.section_starts.index(row["music_start"])]
        for part, keep in ((linked, slice(0, link_dims)), (unlinked, slice(link_dims, None))):
            a, b = code[keep], truth[keep]
            if a.size:
                part.append(abs(float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))))
    return float(np.mean(linked)), float(np.mean(unlinked)) if unlinked else float("nan")


def test_link_dims_cut_the_video_to_music_link_to_those_dimensions(tmp_path):
    linked, unlinked = _code_cosines(tmp_path / "weak", 4)
    assert linked > 0.9 and unlinked < 0.5  # the rest are the video's own draw
    assert _code_cosines(tmp_path / "strong", 16)[0] > 0.9


def test_style_scale_weakens_the_style_and_bad_regime_values_are_refused(tmp_path):
    weak = synthetic.make_dataset(tmp_path / "weak", n_videos=30, n_tracks=3, seed=1, style_scale=0.25)
    strong = synthetic.make_dataset(tmp_path / "strong", n_videos=30, n_tracks=3, seed=1)
    def music(info):
        return torch.load(feature_path(info.root, "music", info.tracks[0].music_id), weights_only=True)

    proj = strong.projections["music_style"]

    def along(info):
        return float(np.linalg.lstsq(proj, music(info).numpy()[0], rcond=None)[0] @ info.tracks[0].style)

    assert along(weak) < 0.5 * along(strong)
    for bad in ({"link_dims": 0}, {"link_dims": 17}, {"style_scale": -1.0}):
        with pytest.raises(UsageError):
            synthetic.make_dataset(tmp_path / "bad", n_videos=30, n_tracks=3, **bad)
    assert not (tmp_path / "bad").exists()
