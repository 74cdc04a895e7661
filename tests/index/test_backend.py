"""The track-store interface: routing, errors, one row per file on both backends, and SQLite = Lance
for one folder indexed by the one pipeline."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from mgsv_cli.errors import IndexDatabaseError, MgsvError, StorageError, UsageError
from mgsv_cli.index.backend import is_lance_uri, open_store
from mgsv_cli.index.lance_store import LanceTrackStore, track_key
from mgsv_cli.index.pipeline import IndexProgress, index_folder
from mgsv_cli.index.records import FileState, NewTrack
from mgsv_cli.index.sqlite_store import SqliteTrackStore
from mgsv_cli.retrieval.derived import derive_rows, model_fingerprint, update_derived

pytest.register_assert_rewrite("_library_helpers")
from _library_helpers import BAD_FILES, TRACKS  # noqa: E402
from _store_helpers import STORE_KINDS, store_at, synthetic, tiny_made  # noqa: E402

pytest_plugins = ["_library_helpers"]

# What a store gives back of the keys it was given: SQLite keeps them in float32 (as computed),
# Lance in float16 (a relative step of 2^-11; |keys| of the tiny MaDe stay below 4).
KEYS_ATOL = {"sqlite": 1e-6, "lance": 2e-3}


def test_open_store_routes_by_uri(monkeypatch, tmp_path):
    opened = []
    monkeypatch.setattr(LanceTrackStore, "open",
                        classmethod(lambda cls, uri, create=False, key_encoding=None: opened.append(uri)))
    for uri in ("s3://bucket/catalog", "gs://b/c.lance", "az://container/lib", "file:///srv/lib", "lib.lance",
                str(tmp_path) + "/", "lib.lance/"):
        assert is_lance_uri(uri), uri
        open_store(uri)
    assert opened[0] == "s3://bucket/catalog"  # unchanged: Lance reads AWS_* credentials itself
    for path in ("index.sqlite", "index.db", str(tmp_path / "no-such-folder")):
        assert not is_lance_uri(path), path
    with pytest.raises(UsageError):
        open_store("  ")
    assert isinstance(open_store(str(tmp_path / "lib.sqlite"), create=True), SqliteTrackStore)


def test_missing_foreign_and_unwritable_stores_are_one_line_errors(tmp_path):
    with pytest.raises(IndexDatabaseError, match="no music index"):
        open_store(str(tmp_path / "missing.sqlite"))
    with pytest.raises(IndexDatabaseError, match="no track store at .*mgsv index"):
        open_store(str(tmp_path / "missing.lance"))
    with pytest.raises(IndexDatabaseError, match="cannot open the track store foo://bucket/lib: .*scheme"):
        open_store("foo://bucket/lib")  # Lance knows no such object store: refused before any network
    folder = tmp_path / "papers"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(IndexDatabaseError, match="not an mgsv track store"):
        open_store(str(folder))
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(StorageError, match="not a folder"):
        open_store(str(tmp_path / "a-file" / "lib.lance"), create=True)
    with pytest.raises(StorageError):
        open_store(str(tmp_path / "a-file" / "index.sqlite"), create=True)
    for kind in STORE_KINDS:  # an empty store is refused where tracks are needed, naming the command
        empty = store_at(tmp_path, kind, "empty")
        open_store(empty, create=True).close()
        with pytest.raises(IndexDatabaseError, match="is empty: run `mgsv index MUSIC_DIR"):
            open_store(empty, require_tracks=True)

    store = tmp_path / "damaged.lance"
    open_store(str(store), create=True)
    for manifest in (store / "tracks.lance" / "_versions").iterdir():
        manifest.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(MgsvError) as caught:
        open_store(str(store)).tracks()
    assert "\n" not in str(caught.value) and str(store) in str(caught.value)


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_a_store_keeps_one_row_per_file_and_its_derived_rows_current(tmp_path, kind):
    store = open_store(store_at(tmp_path, kind), create=True)
    assert len(store) == 0 and store.encoder_id is None
    assert store.add_tracks([synthetic(i) for i in range(4)]) == 4
    id_of = {r.location: r.track_id for r in store.tracks()}
    # The same file again replaces its row (id kept); a new file adds one.
    assert store.add_tracks([synthetic(2), synthetic(4)]) == 2
    assert len(store) == 5 and {r.location: r.track_id for r in store.tracks()}.items() >= id_of.items()
    if kind == "lance":  # ids from the location: the same whichever writer adds the file
        assert all(track_id == track_key(location) for location, track_id in id_of.items())
    model = tiny_made()
    fp = model_fingerprint(model)
    assert update_derived(store, model, fp, batch_size=2) == 5 and store.derived_missing(fp) == []

    store.add_tracks([synthetic(7, location="/m/1.wav")])  # new content at a known location: re-embedded
    changed = id_of["/m/1.wav"]
    assert [r.track_id for r in store.tracks() if r.location == "/m/1.wav"] == [changed] and len(store) == 5
    assert store.find("/m/1.wav").content_hash == f"{7:032x}"
    assert store.derived_missing(fp) == [changed]  # its rows went stale with its content
    assert update_derived(store, model, fp) == 1
    ids, pooled = store.pooled_matrix(fp)
    assert ids.tolist() == sorted(r.track_id for r in store.tracks())
    assert pooled.shape == (5, model.cfg.d_model)
    tokens, mask = store.tokens_for([changed])
    expected = derive_rows(model, [changed], tokens, mask)
    got = store.derived_for(fp, [changed])
    np.testing.assert_allclose(got.pooled, expected.pooled, rtol=1e-6)  # float32 in both stores
    width = got.keys.shape[1]
    np.testing.assert_array_equal(got.mask, expected.mask[:, :width])
    np.testing.assert_allclose(got.keys.astype(np.float32), expected.keys[:, :width], atol=KEYS_ATOL[kind])
    with pytest.raises(IndexDatabaseError, match="encoders 'tiny-x'"):
        store.add_tracks([NewTrack("/m/x.wav", "other", 1.0, np.zeros((96, 768)), np.ones(96, bool), "big")])

    # Rows computed from tokens that were re-embedded meanwhile stay missing: filed under the old content.
    first = id_of["/m/0.wav"]
    old_tokens, old_mask = store.tokens_for([first])
    store.add_tracks([synthetic(9, location="/m/0.wav")])
    store.put_derived(fp, derive_rows(model, [first], old_tokens, old_mask))
    assert store.derived_missing(fp) == [first]
    store.close()


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_what_a_store_knows_of_files_touch_reuse_remove_and_failures(tmp_path, kind):
    """The pipeline's writes, as the interface gives them, alike on both backends."""
    store = open_store(store_at(tmp_path, kind), create=True)
    with store.writing():
        store.add_tracks([dataclasses.replace(synthetic(i), size=100 + i, mtime_ns=10 ** 9 * i) for i in range(3)])
        states = store.file_states()
        assert states["/m/1.wav"] == FileState(101, 10 ** 9, f"{1:032x}") and len(states) == 3

        store.touch([("/m/1.wav", FileState(101, 5, f"{1:032x}"))])  # a new mtime only
        assert store.file_states()["/m/1.wav"] == FileState(101, 5, f"{1:032x}")

        # A copy of track 2's content under another name gets its tokens without embedding.
        assert store.reuse([("/m/copy.wav", FileState(102, 7, f"{2:032x}")),
                            ("/m/new.wav", FileState(50, 7, "no-such-content"))]) == ["/m/copy.wav"]
        copy, source = store.find("/m/copy.wav"), store.find("/m/2.wav")
        assert copy.track_id != source.track_id and copy.content_hash == source.content_hash
        a, b = store.tokens_for([copy.track_id, source.track_id])
        np.testing.assert_array_equal(a[0], a[1])
        np.testing.assert_array_equal(b[0], b[1])
        assert len(store) == 4 and store.file_states()["/m/copy.wav"] == FileState(102, 7, f"{2:032x}")

        store.remember_failures([("/m/bad.mp3", 9, 1, "not audio"), ("/m/copy.wav", 1, 1, "was bad once")])
        assert store.failed_states() == {"/m/bad.mp3": (9, 1), "/m/copy.wav": (1, 1)}
        store.add_tracks([synthetic(5, location="/m/copy.wav")])  # a file that indexes fine is forgotten
        assert [(f.path, f.reason, f.size) for f in store.failed_files()] == [("/m/bad.mp3", "not audio", 9)]
        store.forget_failures(["/m/bad.mp3"])
        assert store.failed_files() == [] and store.failed_states() == {}
        store.remember_failures([("/m/copy2.wav", 1, 1, "was bad once")])  # so is one that gets reused tokens
        assert store.reuse([("/m/copy2.wav", FileState(102, 8, f"{2:032x}"))]) == ["/m/copy2.wav"]
        assert store.failed_states() == {}

        assert store.remove(["/m/0.wav", "/m/copy.wav", "/m/copy2.wav"]) == 3
        assert sorted(store.file_states()) == ["/m/1.wav", "/m/2.wav"] and len(store) == 2
        assert store.find("/m/0.wav") is None
        store.set_beats([(source.track_id, {"tempo_bpm": 120.0, "beats": [0.5], "downbeats": None})])
        assert store.tracks_without_beats() == [(store.find("/m/1.wav").track_id, "/m/1.wav")]
        assert store.beats_for([source.track_id]) == [{"tempo_bpm": 120.0, "beats": [0.5], "downbeats": None}]
    assert store.beat_count() == 1 and store.health().n_tracks == 2
    if kind == "lance":  # nothing to forget: no commit on failed.lance (each one is a version to keep)
        import lance

        with store.writing():
            before = lance.dataset(store.dataset_uri("failed")).version
            assert store.reuse([("/m/copy3.wav", FileState(102, 9, f"{2:032x}"))]) == ["/m/copy3.wav"]
            assert lance.dataset(store.dataset_uri("failed")).version == before
    store.close()


def test_sqlite_index_and_lance_store_of_one_folder_hold_the_same_data(tmp_path, built, tiny_encoders):
    music, index = built
    sqlite = open_store(str(index))
    report = index_folder(music, str(tmp_path / "lib.lance"), encoders=lambda: tiny_encoders, detect_beats=False)
    assert report.ok and report.added == len(TRACKS) and report.n_tracks == len(TRACKS)
    rerun = index_folder(music, str(tmp_path / "lib.lance"), encoders=lambda: pytest.fail("nothing to embed"),
                         detect_beats=False)
    assert (rerun.added, rerun.unchanged) == (0, len(TRACKS))
    lance = open_store(str(tmp_path / "lib.lance"))
    # The same files with the same size, mtime and content, from the same encoders.
    assert lance.encoder_id == sqlite.encoder_id and lance.file_states() == sqlite.file_states()

    def by_location(store):
        records = store.tracks()
        tokens, mask = store.tokens_for([r.track_id for r in records])
        return {r.location: (r, tokens[k], mask[k]) for k, r in enumerate(records)}

    a, b = by_location(sqlite), by_location(lance)
    assert a.keys() == b.keys()
    for location, (rec_a, tok_a, mask_a) in a.items():
        rec_b, tok_b, mask_b = b[location]
        assert (rec_a.content_hash, rec_a.duration, rec_a.tags) == (rec_b.content_hash, rec_b.duration, rec_b.tags)
        np.testing.assert_array_equal(mask_a, mask_b)
        np.testing.assert_array_equal(tok_a[mask_a], tok_b[mask_b])  # bit for bit (both fp16 on disk)

    model = tiny_made(music_dim=next(iter(a.values()))[1].shape[-1])
    fp = model_fingerprint(model)
    for store in (sqlite, lance):
        assert update_derived(store, model, fp) == len(TRACKS)
    ids_a, pooled_a = sqlite.pooled_matrix(fp)
    ids_b, pooled_b = lance.pooled_matrix(fp)
    location_of_a = {r.track_id: r.location for r in sqlite.tracks()}
    location_of_b = {r.track_id: r.location for r in lance.tracks()}
    id_b = {loc: i for i, loc in location_of_b.items()}
    row_b = {int(i): k for k, i in enumerate(ids_b)}
    order_b = [row_b[id_b[location_of_a[int(i)]]] for i in ids_a]
    # One batch of the same tokens through the same model in each: float32 sums only.
    np.testing.assert_allclose(np.asarray(pooled_b)[order_b], pooled_a, rtol=1e-5, atol=1e-6)

    query = np.random.default_rng(0).standard_normal(pooled_a.shape[1]).astype(np.float32)
    ranked_a = [location_of_a[int(ids_a[k])] for k in np.argsort(-(pooled_a @ query))]
    ranked_b = [location_of_b[int(ids_b[k])] for k in np.argsort(-(np.asarray(pooled_b) @ query))]
    assert ranked_a == ranked_b  # the search's first stage ranks the same tracks the same way

    ask = list(ids_a[::-1])
    rows_a = sqlite.derived_for(fp, ask)
    rows_b = lance.derived_for(fp, [id_b[location_of_a[int(i)]] for i in ask])
    assert rows_a.keys.dtype == np.float32 and rows_b.keys.dtype == np.float16
    np.testing.assert_array_equal(rows_a.mask, rows_b.mask)
    np.testing.assert_allclose(rows_a.keys, rows_b.keys.astype(np.float32), atol=KEYS_ATOL["lance"])
    np.testing.assert_allclose(rows_a.pooled, rows_b.pooled, rtol=1e-5, atol=1e-6)

    # MaDe's relevance p_s (mean-pool + X-Pool) of every track for one clip, from each store's rows.
    import torch

    from mgsv_cli.models.made import MusicTokens

    frames = torch.randn(1, 50, model.cfg.video_dim, generator=torch.Generator().manual_seed(3))
    video = model.encode_video(frames, torch.ones(1, 50, dtype=torch.bool))

    def relevance(rows):
        music = MusicTokens(None, torch.from_numpy(rows.mask), torch.from_numpy(rows.pooled),
                            torch.from_numpy(rows.keys.astype(np.float32)))
        with torch.inference_mode():
            return model.score_pairs(video, music)[:, 0].numpy()

    scores_a, scores_b = relevance(rows_a), relevance(rows_b)
    np.testing.assert_allclose(scores_a, scores_b, atol=1e-3)  # float16 keys in Lance
    assert np.argsort(-scores_a).tolist() == np.argsort(-scores_b).tolist()  # the same suggestions, in order


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_index_folder_reports_bad_files_remembers_them_and_a_rerun_embeds_nothing(tmp_path, music_dir,
                                                                                  tiny_encoders, kind):
    class Seen(IndexProgress):
        def __init__(self):
            self.failures, self.stages = [], []

        def stage(self, name, total):
            self.stages.append(name)

        def failed(self, path, reason):
            self.failures.append(Path(path).name)

    uri = store_at(tmp_path, kind)
    seen = Seen()
    report = index_folder(music_dir, uri, encoders=tiny_encoders, progress=seen, detect_beats=False)
    assert (report.added, report.n_tracks, report.ok) == (len(TRACKS), len(TRACKS), False)
    assert sorted(seen.failures) == sorted(BAD_FILES) == sorted(Path(p).name for p, _ in report.failed)
    assert seen.stages == ["checking", "probing", "embedding"]
    with open_store(uri) as store:
        assert sorted(Path(r.location).name for r in store.tracks()) == sorted(Path(t[0]).name for t in TRACKS)
        assert {r.tags.get("title") for r in store.tracks()} == {t[3] for t in TRACKS}
        assert sorted(Path(f.path).name for f in store.failed_files()) == sorted(BAD_FILES)
    rerun = index_folder(music_dir, uri, encoders=lambda: pytest.fail("nothing to embed"), detect_beats=False)
    # The failures are remembered: unchanged, they are not tried again, and the rerun is clean.
    assert (rerun.added, rerun.unchanged, rerun.failed, rerun.skipped_failed) == (0, len(TRACKS), [], len(BAD_FILES))
    assert rerun.ok
    with pytest.raises(UsageError):
        index_folder(tmp_path / "no-music", uri, encoders=tiny_encoders)
