"""MGSV-EC layout reading, the packed cache and its errors."""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _datagen import (
    drop_csv_columns,
    make_dataset,
    remove_feature,
    set_csv_cell,
    write_feature,
)

from mgsv_cli import paths
from mgsv_cli.errors import DataError
from mgsv_cli.research import dataset as data
from mgsv_cli.research.dataset import feature_path, load_split, read_split_csv

# ../shared beside the checkout
REAL_VAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "MGSV-EC" / "val_data.csv"


@pytest.fixture
def small(tmp_path):
    """A fresh, small dataset each test may break."""
    return make_dataset(tmp_path / "root", n_tracks=6, n_train=24, n_val=12, n_test=10, seed=3)


def _touch_later(path: Path) -> None:
    """Make sure a rewritten file's mtime differs even on coarse-grained file systems."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))


def _load(path: Path) -> np.ndarray:
    return torch.load(path, map_location="cpu", weights_only=True).numpy()


# ------------------------------------------------------------------ labels


def test_read_split_csv_reads_generated_rows(small):
    labels = read_split_csv(small.root, "val")
    rows = small.rows["val"]
    assert labels.n == len(rows) == 12
    assert labels.video_id.tolist() == [r["video_id"] for r in rows]
    assert labels.music_id.tolist() == [r["music_id"] for r in rows]
    np.testing.assert_allclose(labels.music_start, [r["music_start"] for r in rows])
    np.testing.assert_allclose(labels.moments[:, 1], [r["music_end"] for r in rows])
    np.testing.assert_allclose(labels.video_duration, [r["video_segment_duration"] for r in rows])
    np.testing.assert_allclose(labels.video_total_duration, [r["video_total_duration"] for r in rows])


def test_generated_data_is_realistic(small):
    for rows in small.rows.values():
        for r in rows:
            assert 5.0 - 1e-9 <= r["video_segment_duration"] <= 50.0
            assert r["music_end"] - r["music_start"] == pytest.approx(r["video_segment_duration"], abs=2e-3)
            assert 0.0 <= r["music_start"] and r["music_end"] <= r["music_total_duration"]
            assert 30.0 <= r["music_total_duration"] <= 240.0
    assert set(small.rows["val"][i]["music_id"] for i in range(12)) <= set(small.track_ids)
    starts = [r["music_start"] for r in small.rows["train"]]
    assert np.mean(np.array(starts) > 1.0) > 0.5  # moments are not all at the track start


def test_missing_csv_names_the_file(tmp_path):
    with pytest.raises(DataError, match=r"dataset/MGSV-EC/val_data\.csv"):
        read_split_csv(tmp_path, "val")


def test_unknown_split_is_refused(small):
    with pytest.raises(DataError, match="unknown split"):
        read_split_csv(small.root, "dev")


def test_missing_columns_are_all_listed(small):
    path = drop_csv_columns(small.root, "val", "music_start", "video_segment_duration")
    with pytest.raises(DataError) as info:
        read_split_csv(small.root, "val")
    message = str(info.value)
    assert str(path) in message and "music_start" in message and "video_segment_duration" in message


def test_unparsable_number_names_file_and_line(small):
    path = set_csv_cell(small.root, "val", 4, "music_end", "12.5s")
    with pytest.raises(DataError, match=r"line 6: column music_end is not a number: '12.5s'") as info:
        read_split_csv(small.root, "val")
    assert str(path) in str(info.value)


@pytest.mark.parametrize("value, why", [("-3", "non-negative"), ("nan", "finite"), ("0", "before music_start")])
def test_impossible_numbers_are_refused(small, value, why):
    set_csv_cell(small.root, "val", 0, "music_end", value)
    if value == "0" and small.rows["val"][0]["music_start"] == 0:
        set_csv_cell(small.root, "val", 0, "music_start", "1")
    with pytest.raises(DataError, match=why):
        read_split_csv(small.root, "val")


@pytest.mark.parametrize("value", ["", "../../etc/passwd", ".."])
def test_unusable_ids_are_refused(small, value):
    set_csv_cell(small.root, "val", 3, "video_id", value)
    with pytest.raises(DataError, match="line 5: video_id .* is not a usable id"):
        read_split_csv(small.root, "val")


def test_labels_only_copy_is_found_beside_the_official_place(tmp_path, small):
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "val_data.csv").write_bytes(data.csv_path(small.root, "val").read_bytes())
    assert read_split_csv(flat, "val").n == 12


@pytest.mark.skipif(not REAL_VAL.is_file(), reason="MGSV-EC val labels not present")
def test_real_val_labels_segment_duration_is_the_moment_length():
    labels = read_split_csv(REAL_VAL.parent.parent, "val")
    assert labels.n == 2000 and len(set(labels.music_id.tolist())) == 2000
    length = labels.music_end - labels.music_start
    assert np.median(np.abs(labels.video_segment_duration - length)) < 0.01
    assert np.abs(labels.video_segment_duration - length).max() < 1.0
    assert np.abs(labels.video_total_duration - length).max() > 50.0  # the other duration is not


# ------------------------------------------------------------------ packing


def test_packed_values_equal_the_pt_files(small):
    split = load_split(small.root, "val")
    labels = split.labels
    assert split.n == 12 and split.n_tracks == len(set(labels.music_id.tolist()))
    assert split.video_feats.dtype == np.float16 and split.track_feats.dtype == np.float32
    assert isinstance(split.video_feats, np.memmap) and isinstance(split.track_feats, np.memmap)
    for row in range(split.n):
        video_id = labels.video_id[row]
        video = split.video_index[row]
        np.testing.assert_array_equal(split.video_feats[video].astype(np.float32),
                                      _load(feature_path(small.root, "video", video_id)))
        np.testing.assert_array_equal(split.video_masks[video], _load(feature_path(small.root, "video_mask", video_id)))
        track = split.track_index[row]
        assert split.track_ids[track] == labels.music_id[row]
        np.testing.assert_array_equal(split.track_feats[track],
                                      _load(feature_path(small.root, "music", labels.music_id[row])))
        np.testing.assert_array_equal(split.track_masks[track],
                                      _load(feature_path(small.root, "music_mask", labels.music_id[row])))
        assert split.track_durations[track] == labels.music_total_duration[row]
    assert split.meta["video_fp16_exact"] is True  # fp16-derived values survive float16 storage


def test_masks_match_durations(small):
    split = load_split(small.root, "train")
    frames_valid = split.video_masks[split.video_index].sum(1)
    expected = np.minimum(50, np.floor(split.labels.video_duration) + 1)
    np.testing.assert_array_equal(frames_valid, expected)
    windows_valid = split.track_masks.sum(1)
    np.testing.assert_array_equal(windows_valid, np.floor(split.track_durations / 2.5) + 1)


def test_float32_video_features_are_stored_nearly_exactly(small):
    video_id = small.rows["val"][0]["video_id"]
    values = torch.randn(50, 512) * 3
    write_feature(small.root, "video", video_id, values)
    split = load_split(small.root, "val")
    assert split.meta["video_fp16_exact"] is False
    assert 0 < split.meta["video_fp16_max_abs_error"] < 1e-2
    stored = split.video_feats[split.video_index[0]].astype(np.float32)
    np.testing.assert_allclose(stored, values.numpy(), rtol=1e-3, atol=1e-3)


def test_cache_is_reused_without_reading_features(small, monkeypatch):
    first = load_split(small.root, "val")
    stages = []

    def forbidden(*args, **kwargs):
        raise AssertionError("a cached split must not re-read feature files")

    monkeypatch.setattr(data, "_load_tensor", forbidden)
    second = load_split(small.root, "val", progress=lambda stage, done, total: stages.append(stage))
    assert second.cache_path == first.cache_path
    assert set(stages) == {"checking"}
    np.testing.assert_array_equal(second.track_feats, first.track_feats)


def test_cache_lives_under_cache_dir_and_reports_progress(small):
    seen: dict[str, tuple[int, int]] = {}
    split = load_split(small.root, "val", progress=lambda stage, done, total: seen.__setitem__(stage, (done, total)))
    assert split.cache_path.parent == paths.cache_dir() / "packed"
    assert seen["packing videos"] == (12, 12)
    assert seen["packing music"][0] == seen["packing music"][1] == split.n_tracks
    meta = json.loads((split.cache_path / "meta.json").read_text())
    assert meta["split"] == "val" and meta["root"] == str(small.root.resolve())
    assert not [p for p in split.cache_path.parent.iterdir() if p.name.startswith(".tmp")]


def test_cache_invalidated_when_a_feature_file_changes(small):
    first = load_split(small.root, "val")
    music_id = first.track_ids[0]
    path = write_feature(small.root, "music", music_id, torch.full((96, 768), 0.5))
    _touch_later(path)
    second = load_split(small.root, "val")
    assert second.cache_path != first.cache_path
    np.testing.assert_array_equal(second.track_feats[0], np.full((96, 768), 0.5, dtype=np.float32))
    assert not first.cache_path.exists()  # the stale pack of the same root and split is gone


def test_cache_invalidated_when_the_csv_changes(small):
    first = load_split(small.root, "val")
    path = set_csv_cell(small.root, "val", 0, "music_start", "0.25")
    _touch_later(path)
    second = load_split(small.root, "val")
    assert second.cache_path != first.cache_path
    assert second.labels.music_start[0] == 0.25
    assert next(second.batches(1)).moment[0, 0].item() == 0.25


def test_splits_and_roots_get_separate_packs(small, tmp_path):
    other = make_dataset(tmp_path / "other", n_tracks=3, n_train=6, n_val=4, n_test=3, seed=5)
    packs = {load_split(small.root, "val").cache_path, load_split(small.root, "test").cache_path,
             load_split(other.root, "val").cache_path}
    assert len(packs) == 3 and all(p.exists() for p in packs)


@pytest.mark.parametrize("kind", ["video", "video_mask", "music", "music_mask"])
def test_missing_feature_file_is_named(small, kind):
    row = small.rows["val"][2]
    item = row["video_id"] if kind.startswith("video") else row["music_id"]
    path = remove_feature(small.root, kind, item)
    with pytest.raises(DataError, match="missing feature file") as info:
        load_split(small.root, "val")
    assert str(path) in str(info.value)


@pytest.mark.parametrize("kind, value, expected", [
    ("video", torch.zeros(49, 512), "shape [49, 512], expected [50, 512]"),
    ("music", torch.zeros(96, 512), "shape [96, 512], expected [96, 768]"),
    ("video_mask", torch.ones(48), "shape [48], expected [50]"),
    ("music_mask", torch.full((96,), 2.0), "mask values must be 0 or 1"),
    ("video", {"frames": torch.zeros(50, 512)}, "holds a dict, expected a tensor"),
    ("music", torch.full((96, 768), float("inf")), "not finite"),
])
def test_malformed_feature_file_is_named(small, kind, value, expected):
    row = small.rows["val"][1]
    item = row["video_id"] if kind.startswith("video") else row["music_id"]
    path = write_feature(small.root, kind, item, value)
    with pytest.raises(DataError, match=expected.replace("[", r"\[").replace("]", r"\]")) as info:
        load_split(small.root, "val")
    assert str(path) in str(info.value)
    assert not [p for p in (paths.cache_dir() / "packed").iterdir()]  # nothing half-written left


def test_corrupt_feature_file_is_named(small):
    path = feature_path(small.root, "video", small.rows["val"][0]["video_id"])
    path.write_bytes(b"this is not a torch file")
    with pytest.raises(DataError, match="cannot read feature file") as info:
        load_split(small.root, "val")
    assert str(path) in str(info.value)


def test_bad_root_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="not a folder"):
        load_split(tmp_path / "nope", "val")


# ------------------------------------------------------------------ batches


def test_batches_shapes_targets_and_order(small):
    split = load_split(small.root, "train")
    batches = list(split.batches(10))
    assert [len(b) for b in batches] == [10, 10, 4] and split.n_batches(10) == 3
    first = batches[0]
    assert first.frames.shape == (10, 50, 512) and first.frames.dtype == torch.float32
    assert first.frame_mask.shape == (10, 50) and first.frame_mask.dtype == torch.bool
    assert first.windows.shape == (10, 96, 768) and first.window_mask.shape == (10, 96)
    assert first.rows.tolist() == list(range(10))
    labels = split.labels
    start, end = labels.music_start[:10], labels.music_end[:10]
    np.testing.assert_allclose(first.span.numpy(), np.stack([(start + end) / 2, end - start], 1) / 240, rtol=1e-6)
    np.testing.assert_allclose(first.moment.numpy(), np.stack([start, end], 1), rtol=1e-6)
    np.testing.assert_allclose(first.video_duration.numpy(), labels.video_segment_duration[:10], rtol=1e-6)
    np.testing.assert_allclose(first.track_duration.numpy(), labels.music_total_duration[:10], rtol=1e-6)
    np.testing.assert_array_equal(first.track_index.numpy(), split.track_index[:10])
    for i in range(10):
        np.testing.assert_array_equal(first.frames[i].numpy(),
                                      split.video_feats[split.video_index[i]].astype(np.float32))
        np.testing.assert_array_equal(first.windows[i].numpy(), split.track_feats[split.track_index[i]])


def test_shuffled_batches_cover_every_row_once_and_depend_on_seed(small):
    split = load_split(small.root, "train")
    order = np.concatenate([b.rows.numpy() for b in split.batches(7, shuffle=True, seed=1)])
    assert sorted(order.tolist()) == list(range(split.n))
    again = np.concatenate([b.rows.numpy() for b in split.batches(7, shuffle=True, seed=1)])
    other = np.concatenate([b.rows.numpy() for b in split.batches(7, shuffle=True, seed=2)])
    assert order.tolist() == again.tolist() and order.tolist() != other.tolist()
    kept = list(split.batches(7, shuffle=True, seed=1, drop_last=True))
    assert [len(b) for b in kept] == [7, 7, 7] and split.n_batches(7, drop_last=True) == 3
    shuffled = split.batch(np.array([5, 0, 17, 3]))
    for i, row in enumerate(shuffled.rows.tolist()):  # gathering out of order keeps rows aligned
        np.testing.assert_array_equal(shuffled.frames[i].numpy(),
                                      split.video_feats[split.video_index[row]].astype(np.float32))
        np.testing.assert_array_equal(shuffled.windows[i].numpy(), split.track_feats[split.track_index[row]])
    assert shuffled.rows.tolist() == [5, 0, 17, 3] and shuffled.span[1].tolist() == pytest.approx(split.spans()[0])


def test_fp16_frames_can_stay_fp16(small):
    split = load_split(small.root, "val")
    half = next(split.batches(4, keep_fp16=True))
    full = next(split.batches(4))
    assert half.frames.dtype == torch.float16 and torch.equal(half.frames.float(), full.frames)


def test_deduplicated_tracks_map_back_to_rows(small):
    split = load_split(small.root, "train")
    plain = split.batch(np.arange(split.n))
    dedup = split.batch(np.arange(split.n), dedupe_tracks=True)
    assert dedup.windows.shape[0] == len(np.unique(split.track_index))
    assert torch.equal(dedup.windows[dedup.track_slot], plain.windows)
    assert torch.equal(dedup.window_mask[dedup.track_slot], plain.window_mask)


def test_batch_moves_to_a_device(small):
    batch = next(load_split(small.root, "val").batches(4)).to("cpu")
    assert batch.frames.device.type == "cpu" and len(batch) == 4


def test_bounded_map_keeps_few_results_pending():
    started = []
    lock = threading.Lock()

    def work(item):
        with lock:
            started.append(item)
        return item * 2

    results = data._bounded_map(work, range(1000), n_workers=2, n_ahead=8)
    assert next(results) == 0
    time.sleep(0.05)
    assert len(started) <= 10  # not all 1000 queued at once
    assert list(results) == [2 * i for i in range(1, 1000)]
