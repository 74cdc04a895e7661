"""`mgsv data build`: pairs CSV of real media files -> the MGSV-EC layout, through the real CLI.

Small generated media (three 12 s tracks, 4 s clips at 2 fps) and the tiny encoders; every
build runs the same feature code as `mgsv index` / `mgsv suggest`.
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from _library_helpers import run_cli

from mgsv_cli.errors import CheckpointError, DataError
from mgsv_cli.media import synth
from mgsv_cli.research import build, dataset

KEYS = ("C", "E", "G#", "D")
INSTRUMENTS = ("pluck", "organ", "bell", "pluck")


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    """Four 12 s tracks (one section each) and two 4 s clips per track; never modified by a test."""
    root = tmp_path_factory.mktemp("build_media")
    for t, (key, instrument) in enumerate(zip(KEYS, INSTRUMENTS)):
        samples = synth.sectioned_samples([(9.0, 110.0, key, instrument)], intro_seconds=3.0, seed=t)
        synth.write_audio(root / "music" / f"song{t}.flac", samples)
        for c in range(2):
            synth.synth_pattern_clip(root / "clips" / f"t{t}c{c}.mp4", 4.0, key, instrument, fps=2, size=96,
                                     seed=10 * t + c)
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video" * 8)
    return root


def write_pairs(path: Path, rows: list[dict], columns=("video", "music", "music_start", "music_end")) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def pair(media: Path, t: int, c: int, **extra) -> dict:
    """Clip c of track t, with its moment: [3, 7] s (the section starts after the 3 s intro)."""
    return {"video": str(media / "clips" / f"t{t}c{c}.mp4"), "music": str(media / "music" / f"song{t}.flac"),
            "music_start": 3.0, "music_end": 7.0, **extra}


def all_pairs(media: Path) -> list[dict]:
    return [pair(media, t, c) for t in range(len(KEYS)) for c in range(2)]


def build_cli(capsys, pairs_csv: Path, root: Path, *extra: str):
    return run_cli(capsys, "data", "build", pairs_csv, root, "--encoders", "tiny", "--device", "cpu", *extra)


def split_rows(root: Path) -> dict[str, list[dict]]:
    found = {}
    for split in dataset.SPLITS:
        with open(dataset.csv_path(root, split), newline="") as handle:
            found[split] = list(csv.DictReader(handle))
    return found


# ---------------------------------------------------------------- the layout


def test_build_writes_the_release_layout_that_training_reads(tmp_path, capsys, media):
    pairs_csv = write_pairs(tmp_path / "pairs.csv", all_pairs(media))
    root = tmp_path / "ds"
    result = build_cli(capsys, pairs_csv, root)
    assert result.code == 0, result.err
    assert "4 tracks (4 embedded now" in result.out and "8 videos (8 embedded now" in result.out
    rows = split_rows(root)
    assert sum(len(r) for r in rows.values()) == 8
    assert all(rows[split] for split in dataset.SPLITS)  # four tracks by track: every split gets one
    header = list(rows["train"][0])
    assert header == list(dataset.CSV_COLUMNS)
    one = rows["train"][0]
    assert float(one["music_start"]) == 3.0 and float(one["video_segment_duration"]) == pytest.approx(4.0)
    assert float(one["music_total_duration"]) == pytest.approx(12.0, abs=0.05)
    assert float(one["video_total_duration"]) == pytest.approx(4.0, abs=0.05)
    record = json.loads((root / dataset.RECORD_NAME).read_text())
    assert record["made_by"] == build.MADE_BY and record["complete"] is True
    assert record["encoders"] == {"id": "tiny-v1", "kind": "tiny", "video_dim": 512, "music_dim": 64}
    enc = dataset.dataset_encoders(root)
    assert enc.recorded and enc.widths == (512, 64) and enc.kind == "tiny"
    # The files are plain tensors, read with weights_only=True, of the recipe's shapes.
    import torch

    music = torch.load(dataset.feature_path(root, "music", one["music_id"]), weights_only=True)
    mask = torch.load(dataset.feature_path(root, "music_mask", one["music_id"]), weights_only=True)
    assert tuple(music.shape) == (96, 64) and int(mask.sum()) == 5  # centres 0, 2.5, ..., 10 <= 12 s
    frames = torch.load(dataset.feature_path(root, "video", one["video_id"]), weights_only=True)
    frame_mask = torch.load(dataset.feature_path(root, "video_mask", one["video_id"]), weights_only=True)
    assert tuple(frames.shape) == (50, 512) and int(frame_mask.sum()) == 5  # t = 0..4 s
    split = dataset.load_split(root, "train")
    assert split.video_dim == 512 and split.music_dim == 64 and split.n == len(rows["train"])


def test_features_are_the_ones_index_and_suggest_make(tmp_path, capsys, media):
    """One recipe: the dataset's tensors equal embed_tracks / embed_video on the same files."""
    from mgsv_cli.features.encoders import load_encoders

    pairs_csv = write_pairs(tmp_path / "pairs.csv", [pair(media, t, 0) for t in range(3)],)
    root = tmp_path / "ds"
    assert build_cli(capsys, pairs_csv, root).code == 0
    import torch

    encoders = load_encoders("tiny", device="cpu")
    row = split_rows(root)["train"][0] if split_rows(root)["train"] else split_rows(root)["val"][0]
    track = next(encoders.embed_tracks([row["music_path"]]))
    stored = torch.load(dataset.feature_path(root, "music", row["music_id"]), weights_only=True).numpy()
    np.testing.assert_allclose(stored, track.feats, rtol=0, atol=1e-5)  # same batches of windows here
    t = int(Path(row["music_path"]).stem[-1])
    video = encoders.embed_video(media / "clips" / f"t{t}c0.mp4")
    stored = torch.load(dataset.feature_path(root, "video", row["video_id"]), weights_only=True).numpy()
    np.testing.assert_allclose(stored, video.feats, rtol=0, atol=1e-4)


def test_each_track_is_embedded_once_however_many_videos_and_names_use_it(tmp_path, capsys, media):
    copy = tmp_path / "elsewhere" / "same-song.flac"
    copy.parent.mkdir()
    shutil.copy2(media / "music" / "song0.flac", copy)
    rows = all_pairs(media) + [{**pair(media, 0, 1), "music": str(copy)}]
    root = tmp_path / "ds"
    result = build_cli(capsys, write_pairs(tmp_path / "pairs.csv", rows), root)
    assert result.code == 0, result.err
    assert "4 tracks (4 embedded now" in result.out  # the copy is the same content: one id, one embedding
    found = split_rows(root)
    ids = {r["music_id"] for rows_ in found.values() for r in rows_}
    assert len(ids) == 4 and all(i.startswith("m") and len(i) == 1 + build.ID_DIGITS for i in ids)


# ---------------------------------------------------------------- labels and the CSV


@pytest.mark.parametrize("change, message", [
    ({"music_end": 13.5, "music_start": 9.5}, "ends after the track"),
    ({"music_end": 9.0}, "the moment lasts 6.00 s but the video"),
    ({"music_end": 2.0}, "music_end (2 s) must be after music_start"),
    ({"music_start": "soon"}, "music_start is not a number"),
    ({"split": "holdout"}, "split 'holdout': expected train, val, test"),
])
def test_bad_labels_are_refused_naming_the_row(tmp_path, capsys, media, change, message):
    rows = [pair(media, t, c, split="train") for t in range(2) for c in range(2)]
    rows[2] = {**rows[2], **change}
    pairs_csv = write_pairs(tmp_path / "pairs.csv", rows, columns=("video", "music", "music_start", "music_end",
                                                                    "split"))
    root = tmp_path / "ds"
    result = build_cli(capsys, pairs_csv, root)
    assert result.code == DataError.exit_code, result.err
    assert f"{pairs_csv} line 4: " in result.err and message in result.err
    assert not (root / "features").exists()  # checked before anything is embedded


def test_missing_columns_missing_files_and_clashing_ids(tmp_path, capsys, media):
    bad = tmp_path / "bad.csv"
    bad.write_text("video,track,start\nx.mp4,y.mp3,1\n")
    result = build_cli(capsys, bad, tmp_path / "ds")
    assert result.code == 4 and "missing column(s) music, music_start, music_end" in result.err
    rows = all_pairs(media)
    rows[1] = {**rows[1], "video": "clips/nowhere.mp4"}
    result = build_cli(capsys, write_pairs(tmp_path / "p.csv", rows), tmp_path / "ds")
    assert result.code == 4 and "line 3: video clips/nowhere.mp4 does not exist" in result.err
    assert str(tmp_path / "clips" / "nowhere.mp4") in result.err  # relative to the CSV's folder
    rows = [pair(media, 0, 0, video_id="a"), pair(media, 1, 0, video_id="a")]
    result = build_cli(capsys, write_pairs(tmp_path / "ids.csv", rows, columns=(*rows[0],)), tmp_path / "ds")
    assert result.code == 4 and "line 3: video_id a names" in result.err and "line 2 gave it" in result.err


def test_an_unreadable_file_leaves_its_rows_out_and_exits_1(tmp_path, capsys, media):
    rows = all_pairs(media) + [{**pair(media, 0, 0), "video": str(media / "broken.mp4")}]
    root = tmp_path / "ds"
    result = build_cli(capsys, write_pairs(tmp_path / "pairs.csv", rows), root)
    assert result.code == 1
    assert "broken.mp4" in result.out and "1 row(s) left out" in result.out
    assert sum(len(r) for r in split_rows(root).values()) == 8


# ---------------------------------------------------------------- splits


def test_splits_by_track_keep_every_track_in_one_split_and_stay_put_as_rows_are_added(tmp_path, capsys, media):
    pairs_csv = tmp_path / "pairs.csv"
    root = tmp_path / "ds"
    write_pairs(pairs_csv, [pair(media, t, 0) for t in range(3)])
    assert build_cli(capsys, pairs_csv, root).code == 0
    first = {r["music_id"]: split for split, rows in split_rows(root).items() for r in rows}
    assert sorted(first.values()) == ["test", "train", "val"]
    write_pairs(pairs_csv, all_pairs(media))
    result = build_cli(capsys, pairs_csv, root)
    assert result.code == 0, result.err
    # Incremental: only the new track and the five new clips are embedded.
    assert "4 tracks (1 embedded now, 3 already there)" in result.out
    assert "8 videos (5 embedded now, 3 already there)" in result.out
    placed: dict[str, set] = {}
    for split, rows in split_rows(root).items():
        for r in rows:
            placed.setdefault(r["music_id"], set()).add(split)
    assert all(len(splits) == 1 for splits in placed.values())  # no track in two splits
    assert all(placed[music_id] == {split} for music_id, split in first.items())  # none moved


def test_split_by_row_and_too_few_tracks(tmp_path, capsys, media):
    root = tmp_path / "ds"
    two = write_pairs(tmp_path / "two.csv", [pair(media, t, c) for t in range(2) for c in range(2)])
    result = build_cli(capsys, two, root)
    assert result.code == 4 and "2 distinct tracks: splitting by track needs at least 3" in result.err
    result = build_cli(capsys, write_pairs(tmp_path / "all.csv", all_pairs(media)), root, "--split-by", "row",
                       "--val-fraction", "0.25", "--test-fraction", "0.25")
    assert result.code == 0, result.err
    assert all(split_rows(root)[split] for split in dataset.SPLITS)


# ---------------------------------------------------------------- resuming, refusing


def test_a_killed_build_resumes_where_it_stopped(tmp_path, media):
    from mgsv_cli.features.encoders import load_encoders

    encoders = load_encoders("tiny", device="cpu")
    pairs_csv = write_pairs(tmp_path / "pairs.csv", all_pairs(media))
    root = tmp_path / "ds"

    def killed_after_two(jobs):
        for n, made in enumerate(build.embed_music_local(jobs, encoders)):
            if n == 2:
                raise KeyboardInterrupt
            yield made

    with pytest.raises(KeyboardInterrupt):
        build.build_dataset(pairs_csv, root, encoders=encoders, embed_music=killed_after_two)
    assert not dataset.csv_path(root, "train").exists()  # no half dataset for `mgsv train` to read
    report = build.build_dataset(pairs_csv, root, encoders=encoders)
    assert (report.reused_music, report.embedded_music) == (2, 2)
    assert (report.reused_videos, report.embedded_videos) == (0, 8)
    again = build.build_dataset(pairs_csv, root, encoder_kind="tiny",
                                encoders=lambda: pytest.fail("nothing to embed: no encoders are loaded"))
    assert (again.embedded_music, again.embedded_videos, again.reused_videos) == (0, 0, 8)


def test_other_encoders_and_other_datasets_are_refused(tmp_path, capsys, media):
    from mgsv_cli.research.synthetic import make_dataset

    pairs_csv = write_pairs(tmp_path / "pairs.csv", all_pairs(media))
    root = tmp_path / "ds"
    assert build_cli(capsys, pairs_csv, root).code == 0
    result = run_cli(capsys, "data", "build", pairs_csv, root, "--encoders", "pretrained", "--offline")
    assert result.code == 2 and "features of the encoders 'tiny-v1'" in result.err and "--encoders tiny" in result.err
    release = tmp_path / "release"
    make_dataset(release, n_videos=20, n_tracks=4, seed=1)
    result = build_cli(capsys, pairs_csv, release)
    assert result.code == 2 and "did not make" in result.err
    result = build_cli(capsys, pairs_csv, root, "--ray-address", "auto")
    assert result.code == 2 and "--ray-address goes with --engine ray" in result.err
    result = build_cli(capsys, pairs_csv, root, "--engine", "spark")
    assert result.code == 2 and "--engine 'spark': expected local or ray" in result.err


# ---------------------------------------------------------------- the checkpoint knows its encoders


def test_train_records_the_datasets_encoders_and_suggest_names_them(tmp_path, capsys, media):
    from mgsv_cli.editor.suggest import _check_checkpoint_fits
    from mgsv_cli.features.encoders import PRETRAINED_ENCODER_ID, TINY_ENCODER_ID
    from mgsv_cli.models.checkpoint import ENCODERS_KEY, checkpoint_encoders, read_metadata

    pairs_csv = write_pairs(tmp_path / "pairs.csv", all_pairs(media))
    root = tmp_path / "ds"
    assert build_cli(capsys, pairs_csv, root).code == 0
    run = tmp_path / "run"
    result = run_cli(capsys, "train", "--data", root, "--config", "tiny", "--epochs", "1", "--batch-size", "2",
                     "--out", run, "--device", "cpu")
    assert result.code == 0, result.err
    assert "the tiny encoders ('tiny-v1', 512/64-d features)" in result.out
    weights = run / "model.safetensors"
    assert json.loads(read_metadata(weights)[ENCODERS_KEY]) == {"id": "tiny-v1", "kind": "tiny", "video_dim": 512,
                                                                "music_dim": 64}
    assert checkpoint_encoders(weights)["recorded"] is True

    class Index:
        uri = "lib.sqlite"
        encoder_id = PRETRAINED_ENCODER_ID

    with pytest.raises(CheckpointError) as caught:
        _check_checkpoint_fits(run, "pretrained", Index())
    message = str(caught.value)
    assert "trained on features of the encoders 'tiny-v1' (--encoders tiny)" in message
    assert "mgsv index MUSIC_DIR --encoders tiny" in message
    Index.encoder_id = TINY_ENCODER_ID
    _check_checkpoint_fits(run, "tiny", Index())  # the same encoders: fine


def test_object_store_files_are_read_through_pyarrow_and_not_downloaded_again(tmp_path, media, monkeypatch):
    """The remote path (`s3://...` in real use) exercised with pyarrow's file:// file system."""
    from mgsv_cli.features.encoders import load_encoders

    monkeypatch.setattr(build, "_location", lambda pairs_csv, cell: cell)  # keep the URIs as written
    downloads = []
    real_download = build._download
    monkeypatch.setattr(build, "_download", lambda uri, folder: downloads.append(uri) or real_download(uri, folder))
    rows = [{**r, "video": "file://" + r["video"], "music": "file://" + r["music"]} for r in all_pairs(media)]
    pairs_csv = write_pairs(tmp_path / "pairs.csv", rows)
    root = tmp_path / "ds"
    encoders = load_encoders("tiny", device="cpu")
    report = build.build_dataset(pairs_csv, root, encoders=encoders)
    assert (report.n_tracks, report.n_videos, report.failed) == (4, 8, [])
    assert sorted(downloads) == sorted({r["video"] for r in rows} | {r["music"] for r in rows})  # once each
    assert not any((root / build.STATE_DIR / "fetch").glob("*.*"))  # the copies are gone
    assert {r["music_path"] for rows_ in split_rows(root).values() for r in rows_} == {r["music"] for r in rows}
    downloads.clear()
    again = build.build_dataset(pairs_csv, root, encoders=encoders)
    assert downloads == [] and again.embedded_music == again.embedded_videos == 0


# ---------------------------------------------------------------- the Ray engine


def test_ray_engine_embeds_the_music_with_the_index_ray_stages(tmp_path, media):
    """`--engine ray`: the music through `ray_engine`'s CPU tasks and AST actors (a local Ray of
    2 CPUs), the same features as the local engine up to float16 (what a track store keeps)."""
    pytest.importorskip("ray")
    import logging

    import ray
    import torch

    pairs_csv = write_pairs(tmp_path / "pairs.csv", all_pairs(media))
    local = build.build_dataset(pairs_csv, tmp_path / "local", encoder_kind="tiny", device="cpu")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    try:
        on_ray = build.build_dataset(pairs_csv, tmp_path / "ray", encoder_kind="tiny", device="cpu", engine="ray")
    finally:
        ray.shutdown()
    assert (on_ray.embedded_music, on_ray.embedded_videos, on_ray.failed) == (4, 8, [])
    assert split_rows(tmp_path / "ray") == split_rows(tmp_path / "local")
    for row in [r for rows in split_rows(tmp_path / "local").values() for r in rows]:
        a = torch.load(dataset.feature_path(tmp_path / "local", "music", row["music_id"]), weights_only=True)
        b = torch.load(dataset.feature_path(tmp_path / "ray", "music", row["music_id"]), weights_only=True)
        assert a.dtype == b.dtype == torch.float32 and a.shape == b.shape
        torch.testing.assert_close(b, a, rtol=2e-3, atol=2e-3)  # float16 on the way
        for kind in ("music_mask", "video", "video_mask"):
            item = row["music_id"] if kind.startswith("music") else row["video_id"]
            made = [torch.load(dataset.feature_path(tmp_path / where, kind, item), weights_only=True)
                    for where in ("ray", "local")]
            torch.testing.assert_close(*made)
    assert local.n_tracks == on_ray.n_tracks == 4
