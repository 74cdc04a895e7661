"""The Lance track store: round trips, derived data, format versions, two writers, a killed writer."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mgsv_cli.errors import DataError, IndexDatabaseError
from mgsv_cli.index.backend import DerivedRows, NewTrack, open_store
from mgsv_cli.index.lance_store import LanceTrackStore, track_id_of

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
    return NewTrack(f"/music/{i:04d}.wav", f"{i:032x}", 2.5 * n, tokens, mask, encoder_id,
                    {"title": f"Track {i}"}, beats)


def random_derived(ids, dim: int = 16, seed: int = 0) -> DerivedRows:
    rng = np.random.default_rng(seed)
    k = len(ids)
    lengths = rng.integers(1, 20, k)
    mask = np.arange(20)[None] < lengths[:, None]
    keys = (rng.standard_normal((k, 20, dim)) * mask[..., None]).astype(np.float16)
    return DerivedRows(np.asarray(ids, np.int64), rng.standard_normal((k, dim)).astype(np.float32), keys, mask)


def hashes_and_ids(uri: Path) -> tuple[list[str], list[int]]:
    import lance

    table = lance.dataset(str(uri / "tracks.lance")).to_table(columns=["content_hash", "id"])
    return table.column("content_hash").to_pylist(), table.column("id").to_pylist()


def test_tracks_round_trip_exactly(tmp_path):
    store = open_store(str(tmp_path / "lib.lance"), create=True)
    assert isinstance(store, LanceTrackStore) and len(store) == 0 and store.encoder_id is None
    tracks = [make_track(i) for i in range(8)] + [make_track(8, n_valid=96), make_track(9, n_valid=1)]
    assert store.add_tracks(tracks) == 10
    assert store.add_tracks([make_track(3), make_track(3), make_track(10)]) == 1  # known and repeated hashes
    assert len(store) == 11 and store.encoder_id == ENCODER
    assert store.content_hashes() == {f"{i:032x}" for i in range(11)}

    ids, durations = store.ids_and_durations()
    assert ids.tolist() == sorted(r.track_id for r in store.tracks())
    assert durations.tolist() == [r.duration for r in store.tracks(ids.tolist())]

    by_hash = {t.content_hash: t for t in tracks}
    records = store.tracks()
    assert sorted(r.track_id for r in records) == [r.track_id for r in records]
    for record in records[:10]:
        assert record.track_id == track_id_of(record.content_hash)
        if record.content_hash in by_hash:
            source = by_hash[record.content_hash]
            assert (record.location, record.duration, record.tags) == (source.location, source.duration, source.tags)

    ask = [track_id_of(f"{i:032x}") for i in (9, 2, 8, 2)]  # any order, repeats allowed
    tokens, mask = store.tokens_for(ask)
    assert tokens.shape == (4, 96, 768) and tokens.dtype == np.float32 and mask.dtype == bool
    for k, i in enumerate((9, 2, 8, 2)):
        source = by_hash[f"{i:032x}"]
        np.testing.assert_array_equal(mask[k], source.mask)
        np.testing.assert_array_equal(tokens[k], source.tokens.astype(np.float16).astype(np.float32))
    assert [r.content_hash for r in store.tracks(ask)] == [f"{i:032x}" for i in (9, 2, 8, 2)]
    assert store.beats_for(ask[0]) == by_hash[f"{9:032x}"].beats and store.beats_for(ask[1]) is None

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
    assert first == sorted(track_id_of(f"{i:032x}") for i in range(6))
    rows = random_derived(first)
    store.put_derived("fp1", rows)
    assert store.derived_missing("fp1") == [] and store.derived_missing("fp2") == first

    added = store.add_tracks([make_track(i) for i in range(4, 9)])
    assert added == 3
    assert store.derived_missing("fp1") == sorted(track_id_of(f"{i:032x}") for i in range(6, 9))

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
    assert meta[b"mgsv_key_encoding"] == b"int8" and meta[b"mgsv_store_format"] == b"2"  # older mgsv refuse it

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

    from mgsv_cli.index import search
    from mgsv_cli.index.backend import update_derived
    from mgsv_cli.index.records import dequantize_keys
    from mgsv_cli.models.made import MaDe, MusicTokens
    from mgsv_cli.models.variants import load_config

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
    np.testing.assert_allclose(search.score_ids(model, video, store, "fp", ids), expected, rtol=1e-5, atol=1e-6)


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
    with pytest.raises(IndexDatabaseError, match=rf"newer mgsv \(store format {newer}, this one reads up to {known}\): upgrade"):
        open_store(str(root))


WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from index.test_lance_store import make_track, random_derived
    from mgsv_cli.index.lance_store import LanceTrackStore, track_id_of
    uri, first, last, lock = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "lock"
    store = LanceTrackStore.open(uri, create=True, lock=lock)
    print("ready", flush=True)
    sys.stdin.readline()  # both writers start together
    added = 0
    for start in range(first, last, 5):
        added += store.add_tracks([make_track(i, n_valid=4) for i in range(start, min(start + 8, last))])
    for start in range(first, last, 10):  # derived rows of the same tracks, also at the same time
        store.put_derived("fp", random_derived([track_id_of(f"{{i:032x}}") for i in range(start, min(start + 10, last))]))
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
                              env=env) for a, b in ((0, 30), (0, 45))]  # the same hashes at the same time
    for proc in procs:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    outputs = [proc.communicate(timeout=120) for proc in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outputs]
    hashes, ids = hashes_and_ids(root)
    assert sorted(hashes) == [f"{i:032x}" for i in range(45)]  # every track once
    assert len(set(ids)) == 45
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
    tokens, mask = store.tokens_for([track_id_of(f"{i:032x}") for i in range(10)])
    assert mask.any(1).all()
    assert store.add_tracks([make_track(i, n_valid=96) for i in range(5, 400)]) == 400 - before
    hashes, _ = hashes_and_ids(root)
    assert sorted(hashes) == [f"{i:032x}" for i in range(400)]
