"""The Lance track store: round trips, derived data, format versions (a format-1 store read and
migrated), two writers, a killed writer."""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mgsv_cli.errors import DataError, IndexDatabaseError
from mgsv_cli.index.backend import open_store
from mgsv_cli.index.lance_store import LanceTrackStore, track_key
from mgsv_cli.index.records import DerivedRows, NewTrack

pytest.register_assert_rewrite("_library_helpers")
from _library_helpers import TRACKS, run_cli  # noqa: E402
from _store_helpers import tiny_made  # noqa: E402

pytest_plugins = ["_library_helpers"]

REPO = Path(__file__).resolve().parents[2]
ENCODER = "tiny-test"


def make_track(i: int, n_valid: int | None = None, encoder_id: str = ENCODER) -> NewTrack:
    """A track with random tokens: ``n_valid`` leading valid windows of 96 (derived from ``i``)."""
    rng = np.random.default_rng(i)
    n = n_valid if n_valid is not None else int(rng.integers(1, 97))
    tokens = np.zeros((96, 768), np.float32)
    tokens[:n] = rng.standard_normal((n, 768))
    mask = np.arange(96) < n
    beats = {"bpm": 100.0 + i, "beats": [0.5, 1.1]} if i % 2 else None
    return NewTrack(location_of(i), f"{i:032x}", 2.5 * n, tokens, mask, encoder_id, {"title": f"Track {i}"}, beats)


def location_of(i: int) -> str:
    return f"/music/{i:04d}.wav"


def id_of(i: int) -> int:
    """The id of :func:`make_track`'s track ``i``: from its location."""
    return track_key(location_of(i))


def random_derived(ids, dim: int = 16, seed: int = 0) -> DerivedRows:
    rng = np.random.default_rng(seed)
    k = len(ids)
    lengths = rng.integers(1, 20, k)
    mask = np.arange(20)[None] < lengths[:, None]
    keys = (rng.standard_normal((k, 20, dim)) * mask[..., None]).astype(np.float16)
    return DerivedRows(np.asarray(ids, np.int64), rng.standard_normal((k, dim)).astype(np.float32), keys, mask)


def locations_and_ids(uri: Path) -> tuple[list[str], list[int]]:
    """Every row of the tracks dataset as it is on disk (duplicates included)."""
    import lance

    table = lance.dataset(str(uri / "tracks.lance")).to_table(columns=["location", "id"])
    return table.column("location").to_pylist(), table.column("id").to_pylist()


def test_tracks_round_trip_exactly(tmp_path):
    store = open_store(str(tmp_path / "lib.lance"), create=True)
    assert isinstance(store, LanceTrackStore) and len(store) == 0 and store.encoder_id is None
    tracks = [make_track(i) for i in range(8)] + [make_track(8, n_valid=96), make_track(9, n_valid=1)]
    assert store.add_tracks(tracks) == 10
    # A known file again replaces its row; one given twice in a call is stored once (the last).
    assert store.add_tracks([make_track(3), make_track(3), make_track(10)]) == 2
    assert len(store) == 11 and store.encoder_id == ENCODER
    assert {loc: s.content_hash for loc, s in store.file_states().items()} == \
        {location_of(i): f"{i:032x}" for i in range(11)}
    assert len(locations_and_ids(tmp_path / "lib.lance")[0]) == 11  # no duplicate rows on disk

    ids, durations = store.ids_and_durations()
    assert ids.tolist() == sorted(r.track_id for r in store.tracks())
    assert durations.tolist() == [r.duration for r in store.tracks(ids.tolist())]

    by_location = {t.location: t for t in tracks}
    records = store.tracks()
    assert sorted(r.track_id for r in records) == [r.track_id for r in records]
    for record in records:
        assert record.track_id == track_key(record.location)
        assert record.token_stamp == track_key(record.content_hash)  # changes with the tokens
        if record.location in by_location:
            source = by_location[record.location]
            assert (record.content_hash, record.duration, record.tags) == \
                (source.content_hash, source.duration, source.tags)
    assert store.find(location_of(4)).track_id == id_of(4) and store.find("/music/none.wav") is None

    ask = [id_of(i) for i in (9, 2, 8, 2)]  # any order, repeats allowed
    tokens, mask = store.tokens_for(ask)
    assert tokens.shape == (4, 96, 768) and tokens.dtype == np.float32 and mask.dtype == bool
    for k, i in enumerate((9, 2, 8, 2)):
        source = by_location[location_of(i)]
        np.testing.assert_array_equal(mask[k], source.mask)
        np.testing.assert_array_equal(tokens[k], source.tokens.astype(np.float16).astype(np.float32))
    assert [r.content_hash for r in store.tracks(ask)] == [f"{i:032x}" for i in (9, 2, 8, 2)]
    assert store.beats_for(ask[:2]) == [by_location[location_of(9)].beats, None]
    assert store.beat_count() == 5  # the odd tracks 1..9 have a grid

    seen = []
    for ids, batch_tokens, batch_mask in store.iter_tokens(batch_size=4):
        assert batch_tokens.shape[1:] == (96, 768) and batch_mask.shape == batch_tokens.shape[:2]
        seen += ids.tolist()
    assert sorted(seen) == sorted(r.track_id for r in records)

    with pytest.raises(IndexDatabaseError, match="not in the track store"):
        store.tokens_for([12345])
    with pytest.raises(IndexDatabaseError, match="encoders 'tiny-test'"):
        store.add_tracks([make_track(50, encoder_id="other-encoder")])
    with pytest.raises(DataError, match="expected"):
        store.add_tracks([NewTrack("x", "bad", 1.0, np.zeros((97, 768)), np.ones(97, bool), ENCODER)])


def test_derived_rows_are_incremental_and_memory_mapped(tmp_path):
    store = open_store(str(tmp_path / "lib.lance"), create=True)
    store.add_tracks([make_track(i) for i in range(6)])
    first = store.derived_missing("fp1")
    assert first == sorted(id_of(i) for i in range(6))
    rows = random_derived(first)
    store.put_derived("fp1", rows)
    assert store.derived_missing("fp1") == [] and store.derived_missing("fp2") == first

    assert store.add_tracks([make_track(i) for i in range(4, 9)]) == 5
    # Files 4 and 5 again with the same content: their rows stay current (their content key did not change).
    assert store.derived_missing("fp1") == sorted(id_of(i) for i in range(6, 9))

    ids, pooled = store.pooled_matrix("fp1")
    assert isinstance(pooled, np.memmap) and pooled.dtype == np.float32 and pooled.shape == (6, 16)
    np.testing.assert_array_equal(ids, np.sort(rows.track_ids))
    order = np.argsort(rows.track_ids)
    np.testing.assert_array_equal(pooled, rows.pooled[order])

    ask = [first[3], first[0], first[5]]
    got = store.derived_for("fp1", ask)
    np.testing.assert_array_equal(got.track_ids, ask)
    width = int(rows.mask[[3, 0, 5]].sum(1).max())
    assert got.keys.shape == (3, width, 16) and got.keys.dtype == np.float16
    for k, src in enumerate((3, 0, 5)):
        np.testing.assert_array_equal(got.pooled[k], rows.pooled[src])
        np.testing.assert_array_equal(got.mask[k], rows.mask[src, :width])
        np.testing.assert_array_equal(got.keys[k], rows.keys[src, :width])

    new = store.derived_missing("fp1")
    replaced = random_derived([first[0], *new], seed=1)  # replaces one row, adds the new tracks
    store.put_derived("fp1", replaced)
    assert store.derived_missing("fp1") == []
    ids, pooled = store.pooled_matrix("fp1")  # a new version: exported again
    assert len(ids) == 9
    np.testing.assert_array_equal(pooled[list(ids).index(first[0])], replaced.pooled[0])
    np.testing.assert_array_equal(store.derived_for("fp1", [first[0]]).pooled[0], replaced.pooled[0])
    with pytest.raises(IndexDatabaseError, match="derived rows"):
        store.derived_for("fp1", [42])
    with pytest.raises(IndexDatabaseError, match=r"tracks \[42\] are not in the track store"):
        store.put_derived("fp1", random_derived([42]))
    with pytest.raises(DataError, match="width"):
        store.put_derived("fp1", random_derived([first[1]], dim=8))
    with pytest.raises(DataError, match="fingerprint"):
        store.derived_missing("../escape")

    # File 2 with new content: the same track (id), its rows stale until derived again.
    store.add_tracks([dataclasses.replace(make_track(100), location=location_of(2))])
    assert store.derived_missing("fp1") == [id_of(2)] and len(store) == 9
    assert id_of(2) not in store.pooled_matrix("fp1")[0].tolist()  # the first stage never sees stale rows
    store.tokens_for([id_of(2)])  # rows are filed under the content of the tokens last read for them
    store.put_derived("fp1", random_derived([id_of(2)], seed=2))
    assert store.derived_missing("fp1") == [] and id_of(2) in store.pooled_matrix("fp1")[0].tolist()


def test_int8_keys_are_the_stores_choice_and_decode_within_the_quantization_step(tmp_path):
    import lance

    from mgsv_cli.errors import UsageError
    from mgsv_cli.index.records import dequantize_keys, quantize_keys

    root = tmp_path / "int8.lance"
    store = open_store(str(root), create=True, key_encoding="int8")
    store.add_tracks([make_track(i) for i in range(5)])
    again = open_store(str(root))  # the choice is the store's, read back from its metadata
    assert again.key_encoding == "int8"
    with pytest.raises(UsageError, match="keeps int8 keys"):
        open_store(str(root), key_encoding="float16")
    with pytest.raises(UsageError, match="Lance track stores"):
        open_store(str(tmp_path / "lib.sqlite"), create=True, key_encoding="int8")
    with pytest.raises(UsageError, match="key encoding 'int4'"):
        open_store(str(tmp_path / "other.lance"), create=True, key_encoding="int4")

    ids = again.derived_missing("fp1")
    rows = random_derived(ids)
    rows.keys[0, 0] = 0  # an all-zero window: scale 0, decodes to zeros
    again.put_derived("fp1", rows)
    meta = lance.dataset(str(root / "derived" / "fp1.lance")).schema.metadata
    assert meta[b"mgsv_key_encoding"] == b"int8" and meta[b"mgsv_store_format"] == b"4"  # older mgsv refuse it

    ask = [ids[4], ids[0], ids[2]]
    got = again.derived_for("fp1", ask)
    assert got.keys.dtype == np.int8 and got.key_scales.shape == got.mask.shape == got.keys.shape[:2]
    exact = rows.keys[[4, 0, 2], :got.keys.shape[1]].astype(np.float32)
    decoded = dequantize_keys(got.keys, got.key_scales)
    step = np.abs(exact).max(-1, keepdims=True) / 127
    assert (np.abs(decoded - exact) <= step / 2 + 1e-6).all()  # rounding: at most half a step per entry
    np.testing.assert_array_equal(decoded[1, 0], 0.0)
    expected_q, expected_s = quantize_keys(exact)
    np.testing.assert_array_equal(got.keys, expected_q)
    np.testing.assert_array_equal(got.key_scales, expected_s)
    np.testing.assert_array_equal(got.mask, rows.mask[[4, 0, 2], :got.keys.shape[1]])
    np.testing.assert_array_equal(got.pooled, rows.pooled[[4, 0, 2]])


def test_the_search_dequantizes_int8_keys_as_records_does(tmp_path):
    """score_ids on an int8 store equals the model's score on the keys dequantized by
    records.dequantize_keys: the search's own gather-convert-scale pass is exact."""
    import torch

    from mgsv_cli.index.records import dequantize_keys
    from mgsv_cli.models.made import MaDe, MusicTokens
    from mgsv_cli.models.variants import load_config
    from mgsv_cli.retrieval.derived import update_derived
    from mgsv_cli.retrieval.keys import score_ids

    torch.manual_seed(0)
    model = MaDe(load_config("tiny").model).eval()
    store = open_store(str(tmp_path / "int8.lance"), create=True, key_encoding="int8")
    store.add_tracks([make_track(i) for i in range(12)])
    assert update_derived(store, model, "fp") == 12
    ids = sorted(r.track_id for r in store.tracks())
    with torch.inference_mode():
        video = model.encode_video(torch.randn(1, 50, 512), torch.arange(50)[None] < 30)
        rows = store.derived_for("fp", ids)
        music = MusicTokens(None, torch.from_numpy(rows.mask), torch.from_numpy(rows.pooled),
                            torch.from_numpy(dequantize_keys(rows.keys, rows.key_scales)))
        expected = model.score_pairs(video, music)[:, 0].numpy()
    np.testing.assert_allclose(score_ids(model, video, store, "fp", ids), expected, rtol=1e-5, atol=1e-6)


def test_derived_for_decodes_masks_with_holes_repeats_and_any_order(tmp_path):
    """The scoring blob's decoder (slice copies from the arrow buffer) against the rows put: masks
    with holes, rows from two commits (fragments), ids asked twice and out of position order."""
    from mgsv_cli.index.lance_store import _decode_scoring

    store = open_store(str(tmp_path / "lib.lance"), create=True)
    store.add_tracks([make_track(i) for i in range(10)])
    ids = store.derived_missing("fp1")
    rows = random_derived(ids, seed=3)
    mask = rows.mask.copy()
    mask[::2, 0] = False  # a hole before the last valid window: kept, as stored
    keys = (rows.keys * mask[..., None]).astype(np.float16)
    parts = (rows.track_ids, rows.pooled, keys, mask)
    store.put_derived("fp1", DerivedRows(*(a[:6] for a in parts)))
    store.put_derived("fp1", DerivedRows(*(a[6:] for a in parts)))
    pick = [9, 0, 7, 7, 2, 5]
    got = store.derived_for("fp1", [ids[k] for k in pick])
    width = max(int(np.flatnonzero(mask[k]).max()) + 1 for k in pick)
    assert got.keys.shape == (6, width, 16) and got.mask.dtype == bool
    np.testing.assert_array_equal(got.track_ids, [ids[k] for k in pick])
    np.testing.assert_array_equal(got.pooled, rows.pooled[pick])
    np.testing.assert_array_equal(got.mask, mask[pick, :width])
    np.testing.assert_array_equal(got.keys, keys[pick, :width])

    import pyarrow as pa

    bad = pa.array([b"\0" * 70], pa.large_binary())  # 70 bytes: no window count gives that size
    with pytest.raises(IndexDatabaseError, match="size"):
        _decode_scoring(bad, np.zeros(1, np.int64), 16)


def test_compaction_keeps_every_track_and_derived_row(tmp_path):
    import lance

    store = open_store(str(tmp_path / "lib.lance"), create=True)
    for start in range(0, 12, 3):  # one fragment per commit
        store.add_tracks([make_track(i) for i in range(start, start + 3)])
        store.put_derived("fp1", random_derived(store.derived_missing("fp1"), seed=start))
    ids = store.derived_missing("fp0")
    tokens, mask = store.tokens_for(ids)
    pooled_ids, pooled = (np.array(a) for a in store.pooled_matrix("fp1"))
    keys = store.derived_for("fp1", ids[::-1])
    assert store.compact(min_fragments=100) == 0
    assert store.compact(min_fragments=2) == 2  # tracks and fp1
    assert len(lance.dataset(str(tmp_path / "lib.lance" / "tracks.lance")).get_fragments()) == 1
    again_tokens, again_mask = store.tokens_for(ids)
    np.testing.assert_array_equal(again_tokens, tokens)
    np.testing.assert_array_equal(again_mask, mask)
    assert store.derived_missing("fp1") == [] and store.derived_missing("fp0") == ids
    again_ids, again_pooled = store.pooled_matrix("fp1")
    np.testing.assert_array_equal(again_ids, pooled_ids)
    np.testing.assert_array_equal(again_pooled, pooled)
    np.testing.assert_array_equal(store.derived_for("fp1", ids[::-1]).keys, keys.keys)


def test_a_store_of_a_newer_format_is_refused(tmp_path):
    import lance

    from mgsv_cli.index import lance_store

    root = tmp_path / "new.lance"
    open_store(str(root), create=True).add_tracks([make_track(1)])
    table = lance.dataset(str(root / "tracks.lance")).to_table()
    meta = dict(table.schema.metadata)
    meta[b"mgsv_store_format"] = str(lance_store.FORMAT_VERSION + 2).encode()
    lance.write_dataset(table.replace_schema_metadata(meta), str(root / "tracks.lance"), mode="overwrite")
    newer, known = lance_store.FORMAT_VERSION + 2, lance_store.FORMAT_VERSION
    with pytest.raises(IndexDatabaseError,
                       match=rf"newer mgsv \(store format {newer}, this one reads up to {known}\): upgrade"):
        open_store(str(root))


WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from index.test_lance_store import id_of, make_track, random_derived
    from mgsv_cli.index.lance_store import LanceTrackStore
    uri, first, last, lock = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "lock"
    store = LanceTrackStore.open(uri, create=True, lock=lock)
    print("ready", flush=True)
    sys.stdin.readline()  # both writers start together
    added = 0
    for start in range(first, last, 5):
        added += store.add_tracks([make_track(i, n_valid=4) for i in range(start, min(start + 8, last))])
    for start in range(first, last, 10):  # derived rows of the same tracks, also at the same time
        store.put_derived("fp", random_derived([id_of(i) for i in range(start, min(start + 10, last))]))
    print("added", added, flush=True)
""")


@pytest.mark.parametrize("lock", ["lock", "no-lock"])  # a local folder, and an object store's way (no flock)
def test_two_writers_at_once_land_without_duplicates(tmp_path, lock):
    root = tmp_path / "shared.lance"
    open_store(str(root), create=True)
    script = WRITER.format(tests=str(REPO / "tests"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(root), str(a), str(b), lock],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for a, b in ((0, 30), (0, 45))]  # the same files at the same time
    for proc in procs:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    outputs = [proc.communicate(timeout=120) for proc in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outputs]
    locations, ids = locations_and_ids(root)
    assert sorted(locations) == [location_of(i) for i in range(45)]  # every file once
    assert sorted(ids) == sorted(id_of(i) for i in range(45))
    store = open_store(str(root))
    assert len(store) == 45 and store.derived_missing("fp") == []
    import lance

    derived_ids = lance.dataset(str(root / "derived" / "fp.lance")).to_table(columns=["track_id"]).column(0)
    assert sorted(derived_ids.to_pylist()) == sorted(ids)  # one row per track


KILLED = textwrap.dedent("""
    import os, signal, sys, threading, time
    sys.path.insert(0, {tests!r})
    from index.test_lance_store import make_track
    from mgsv_cli.index.lance_store import LanceTrackStore
    uri = sys.argv[1]
    store = LanceTrackStore.open(uri, create=True)
    store.add_tracks([make_track(i) for i in range(10)])
    data = os.path.join(uri, "tracks.lance", "data")
    before = set(os.listdir(data))

    def kill_when_writing():  # SIGKILL as soon as the next append's first data file appears
        while set(os.listdir(data)) == before:
            time.sleep(0.001)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=kill_when_writing, daemon=True).start()
    store.add_tracks([make_track(i, n_valid=96) for i in range(10, 400)])
    time.sleep(30)  # the commit landed before the kill: wait for it
""")


def test_a_killed_writer_leaves_the_store_readable_and_the_rerun_completes(tmp_path):
    root = tmp_path / "killed.lance"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", KILLED.format(tests=str(REPO / "tests")), str(root)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    store = open_store(str(root))
    before = len(store)
    assert before in (10, 400)  # one commit per call: all of the batch or none of it
    tokens, mask = store.tokens_for([id_of(i) for i in range(10)])
    assert mask.any(1).all()
    assert store.add_tracks([make_track(i, n_valid=96) for i in range(5, 400)]) == 395  # upserts by file
    locations, _ = locations_and_ids(root)
    assert sorted(locations) == [location_of(i) for i in range(400)]  # each file once
    assert store.tokens_for([id_of(5)])[1].all()  # the rerun's tokens replaced the first commit's


# ---------------------------------------------------------------- a store of format 1


def format1_tracks_schema():
    """The tracks schema mgsv wrote before rows were kept per file (format 1): one row per
    content, its id 63 bits of BLAKE2b of the content hash, no size, mtime or content key."""
    import pyarrow as pa

    return pa.schema([
        pa.field("id", pa.int64(), nullable=False), pa.field("location", pa.string()),
        pa.field("content_hash", pa.string(), nullable=False), pa.field("duration", pa.float64()),
        pa.field("tags", pa.string()), pa.field("encoder_id", pa.string()), pa.field("n_windows", pa.int32()),
        pa.field("feat_dim", pa.int32()), pa.field("tokens", pa.large_binary()), pa.field("mask", pa.binary()),
        pa.field("beats", pa.string()),
    ], metadata={b"mgsv_store_format": b"1", b"mgsv_store_kind": b"tracks", b"mgsv_key_encoding": b"float16"})


def format1_derived_schema(dim: int, fingerprint: str):
    """A derived dataset of format 1 (float16 keys, no score offsets): no content key."""
    import pyarrow as pa

    return pa.schema([
        pa.field("track_id", pa.int64(), nullable=False), pa.field("pooled", pa.list_(pa.float32(), dim)),
        pa.field("n_windows", pa.int32()),
        pa.field("scoring", pa.large_binary(), metadata={"lance-encoding:compression": "none"}),
    ], metadata={b"mgsv_store_format": b"1", b"mgsv_store_kind": b"derived", b"fingerprint": fingerprint.encode(),
                 b"mgsv_key_encoding": b"float16", b"mgsv_score_offsets": b"0"})


def write_format1_store(root: Path, records, tokens, mask, encoder_id: str, model, fingerprint: str):
    """A Lance store as mgsv of format 1 left it, written by hand: the tracks ``records`` (with their
    ``tokens`` [K, 96, D] and ``mask``) and ``model``'s derived rows of them under ``fingerprint``.
    Returns the derived rows written."""
    import json

    import lance
    import pyarrow as pa

    from mgsv_cli.index.lance_store import _scoring_blobs
    from mgsv_cli.index.records import valid_length
    from mgsv_cli.retrieval.derived import derive_rows

    ids = [track_key(r.content_hash) for r in records]
    counts = [valid_length(m) for m in mask]
    tracks = pa.Table.from_pydict({
        "id": ids, "location": [r.location for r in records], "content_hash": [r.content_hash for r in records],
        "duration": [r.duration for r in records], "tags": [json.dumps(r.tags, sort_keys=True) for r in records],
        "encoder_id": [encoder_id] * len(records), "n_windows": counts,
        "feat_dim": [tokens.shape[2]] * len(records),
        "tokens": [np.ascontiguousarray(t[:n], dtype="<f2").tobytes() for t, n in zip(tokens, counts)],
        "mask": [m[:n].astype(np.uint8).tobytes() for m, n in zip(mask, counts)],
        "beats": [None] * len(records),
    }, schema=format1_tracks_schema())
    lance.write_dataset(tracks, str(root / "tracks.lance"), schema=tracks.schema, mode="create")
    rows = derive_rows(model, ids, tokens, mask)
    dim = rows.pooled.shape[1]
    n_keys = [valid_length(m) for m in rows.mask]
    derived = pa.Table.from_arrays([
        pa.array(ids, pa.int64()),
        pa.FixedSizeListArray.from_arrays(pa.array(rows.pooled.reshape(-1), pa.float32()), dim),
        pa.array(n_keys, pa.int32()),
        _scoring_blobs(rows.pooled, rows.keys, rows.mask, n_keys),
    ], schema=format1_derived_schema(dim, fingerprint))
    lance.write_dataset(derived, str(root / "derived" / f"{fingerprint}.lance"), schema=derived.schema,
                        mode="create")
    return rows


def test_a_store_of_format_1_reads_and_is_migrated_on_its_first_write_keeping_its_derived_rows(
        capsys, monkeypatch, tmp_path, built, good_music_dir, tiny_encoders):
    import lance

    import mgsv_cli.features.encoders as features
    from mgsv_cli.retrieval.derived import update_derived
    from mgsv_cli.retrieval.search import Retriever

    music = good_music_dir.resolve()
    with open_store(str(built[1])) as index:  # the same files' tokens, by content
        built_records = index.tracks()
        tokens, mask = index.tokens_for([r.track_id for r in built_records])
    records = [dataclasses.replace(r, location=str(music / Path(r.location).relative_to(built[0])))
               for r in built_records]
    root = tmp_path / "old.lance"
    model, fp = tiny_made(music_dim=tiny_encoders.music_dim), "tiny0"
    written = write_format1_store(root, records, tokens, mask, tiny_encoders.encoder_id, model, fp)
    content_ids = sorted(track_key(r.content_hash) for r in records)

    def versions():
        return (lance.dataset(str(root / "tracks.lance")).version,
                lance.dataset(str(root / "derived" / f"{fp}.lance")).version)

    # Read as it is: ids are the content keys, and the derived rows are current.
    before = versions()
    store = open_store(str(root))
    assert sorted(r.track_id for r in store.tracks()) == content_ids and len(store) == len(TRACKS)
    assert all(s.size is None and s.mtime_ns is None for s in store.file_states().values())
    assert store.derived_missing(fp) == []
    ids, pooled = store.pooled_matrix(fp)
    assert ids.tolist() == content_ids
    np.testing.assert_array_equal(np.asarray(pooled), written.pooled[np.argsort(written.track_ids)])
    got = store.derived_for(fp, written.track_ids.tolist())
    width = got.keys.shape[1]
    np.testing.assert_allclose(got.keys.astype(np.float32), written.keys[:, :width], atol=2e-3)  # float16 keys
    retriever = Retriever.open(store, model, fp, device="cpu")
    assert "music_derived_current" in retriever.timings and len(retriever) == len(TRACKS)
    assert versions() == before  # reading never writes
    store.close()

    loads = []
    real_load = features.load_encoders

    def load(*args, **kwargs):
        loads.append(kwargs.get("kind"))
        return tiny_encoders if kwargs.get("kind") == "tiny" else real_load(*args, **kwargs)

    monkeypatch.setattr(features, "load_encoders", load)

    def index_cli():
        return run_cli(capsys, "index", music, "--store", root, "--encoders", "tiny", "--device", "cpu", "--no-beats")

    # The first write migrates: the files are recognised by content (no embedding), their size
    # and mtime recorded, and the derived rows stay current.
    first = index_cli()
    assert first.code == 0, first.err
    assert "0 added, 0 updated, 3 unchanged (3 touched)" in first.out and loads == []
    tracks_ds = lance.dataset(str(root / "tracks.lance"))
    assert tracks_ds.schema.metadata[b"mgsv_store_format"] == b"2"
    assert {"size", "mtime_ns", "content_key"} <= set(tracks_ds.schema.names)
    table = tracks_ds.to_table(columns=["id", "content_key", "location", "size", "mtime_ns"]).to_pylist()
    assert sorted(row["id"] for row in table) == content_ids and all(row["content_key"] == row["id"] for row in table)
    for row in table:
        stat = Path(row["location"]).stat()
        assert (row["size"], row["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns)
    store = open_store(str(root))
    assert store.derived_missing(fp) == []
    assert index_cli().out.count("3 unchanged, 0 pruned") == 1 and loads == []  # now by size and mtime

    # A changed file is embedded again: a track keyed by its location now, and the only one encoded.
    from mgsv_cli.media import synth

    changed = music / TRACKS[0][0]
    synth.synth_track(changed, seconds=12.0, bpm=150.0, seed=9, title="Alpha v2")
    result = index_cli()
    assert result.code == 0 and "0 added, 1 updated, 2 unchanged" in result.out, result.out + result.err
    assert loads == ["tiny"]
    new_id = store.find(changed).track_id
    assert new_id == track_key(str(changed)) and len(store) == len(TRACKS)
    assert store.derived_missing(fp) == [new_id]
    assert update_derived(store, model, fp) == 1  # the first write of the derived rows migrates them
    derived_ds = lance.dataset(str(root / "derived" / f"{fp}.lance"))
    assert derived_ds.schema.metadata[b"mgsv_store_format"] == b"4" and "content_key" in derived_ds.schema.names
    assert store.derived_missing(fp) == []
    kept = [i for i in content_ids if i in {r.track_id for r in store.tracks()}]
    assert len(kept) == 2  # the unchanged tracks keep their ids and rows
    np.testing.assert_array_equal(store.derived_for(fp, kept).pooled,
                                  written.pooled[[written.track_ids.tolist().index(i) for i in kept]])
    store.close()
