"""The track-store interface: routing, errors, the SQLite adapter, and SQLite = Lance for one folder."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mgsv_cli.errors import IndexDatabaseError, MgsvError, StorageError, UsageError
from mgsv_cli.index import backend
from mgsv_cli.index.backend import NewTrack, index_to_store, is_lance_uri, open_store, update_derived
from mgsv_cli.index.lance_store import LanceTrackStore
from mgsv_cli.index.sqlite_store import SqliteTrackStore

pytest.register_assert_rewrite("_library_helpers")
from _library_helpers import BAD_FILES, TRACKS  # noqa: E402

pytest_plugins = ["_library_helpers"]


def test_open_store_routes_by_uri(monkeypatch, tmp_path):
    opened = []
    monkeypatch.setattr(LanceTrackStore, "open", classmethod(lambda cls, uri, create=False, key_encoding=None: opened.append(uri)))
    for uri in ("s3://bucket/catalog", "gs://b/c.lance", "az://container/lib", "file:///srv/lib", "lib.lance",
                str(tmp_path) + "/", "lib.lance/"):
        assert is_lance_uri(uri), uri
        open_store(uri)
    assert opened[0] == "s3://bucket/catalog"  # unchanged: Lance reads AWS_* credentials itself
    for path in ("index.sqlite", "index.db", str(tmp_path / "no-such-folder")):
        assert not is_lance_uri(path), path
    with pytest.raises(UsageError):
        open_store("  ")


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

    store = tmp_path / "damaged.lance"
    open_store(str(store), create=True)
    for manifest in (store / "tracks.lance" / "_versions").iterdir():
        manifest.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(MgsvError) as caught:
        open_store(str(store)).tracks()
    assert "\n" not in str(caught.value) and str(store) in str(caught.value)


def tiny_made(music_dim: int = 768):
    """An untrained tiny MaDe for tokens of ``music_dim`` (the tiny encoders make 64)."""
    import dataclasses

    import torch

    from mgsv_cli.models.made import MaDe
    from mgsv_cli.models.variants import load_config

    torch.manual_seed(0)
    return MaDe(dataclasses.replace(load_config("tiny").model, music_dim=music_dim)).eval()


def synthetic(i: int, location: str | None = None) -> NewTrack:
    rng = np.random.default_rng(i)
    n = 5 + i
    tokens = np.zeros((96, 768), np.float32)
    tokens[:n] = rng.standard_normal((n, 768))
    return NewTrack(location or f"/m/{i}.wav", f"{i:032x}", 2.5 * n, tokens, np.arange(96) < n, "tiny-x",
                    {"title": f"T{i}"}, None)


def test_sqlite_adapter_adds_tracks_and_keeps_derived_data_current(tmp_path):
    from mgsv_cli.index.token_cache import model_fingerprint

    store = open_store(str(tmp_path / "lib.sqlite"), create=True)
    assert isinstance(store, SqliteTrackStore) and len(store) == 0
    assert store.add_tracks([synthetic(i) for i in range(4)]) == 4
    assert store.add_tracks([synthetic(2), synthetic(4)]) == 1  # a known hash is skipped
    model = tiny_made()
    fp = model_fingerprint(model)
    assert update_derived(store, model, fp, batch_size=2) == 5 and store.derived_missing(fp) == []

    store.add_tracks([synthetic(7, location="/m/1.wav")])  # new content at a known location: re-embedded
    (changed,) = [r.track_id for r in store.tracks() if r.location == "/m/1.wav"]
    assert store.derived_missing(fp) == [changed]
    update_derived(store, model, fp)
    ids, pooled = store.pooled_matrix(fp)
    assert ids.tolist() == sorted(r.track_id for r in store.tracks()) and pooled.shape == (5, model.cfg.d_model)
    tokens, mask = store.tokens_for([changed])
    expected = backend.derive_rows(model, [changed], tokens, mask)
    np.testing.assert_allclose(store.derived_for(fp, [changed]).pooled, expected.pooled, rtol=1e-6)
    with pytest.raises(IndexDatabaseError, match="encoders 'tiny-x'"):
        store.add_tracks([NewTrack("/m/x.wav", "other", 1.0, np.zeros((96, 768)), np.ones(96, bool), "big")])

    # Rows computed from tokens that were re-embedded meanwhile stay missing: filed under the old stamp.
    (first,) = [r.track_id for r in store.tracks() if r.location == "/m/0.wav"]
    old_tokens, old_mask = store.tokens_for([first])
    store.add_tracks([synthetic(9, location="/m/0.wav")])
    store.put_derived(fp, backend.derive_rows(model, [first], old_tokens, old_mask))
    assert store.derived_missing(fp) == [first]


def test_sqlite_index_and_lance_store_of_one_folder_hold_the_same_data(tmp_path, built, tiny_encoders):
    from mgsv_cli.index.token_cache import model_fingerprint

    music, index = built
    sqlite = open_store(str(index))
    report = index_to_store(music, str(tmp_path / "lib.lance"), encoders=lambda: tiny_encoders)
    assert report.ok and report.added == len(TRACKS) and report.n_tracks == len(TRACKS)
    rerun = index_to_store(music, str(tmp_path / "lib.lance"), encoders=lambda: pytest.fail("nothing to embed"))
    assert (rerun.added, rerun.unchanged) == (0, len(TRACKS))
    lance = open_store(str(tmp_path / "lib.lance"))
    assert lance.encoder_id == sqlite.encoder_id and lance.content_hashes() == sqlite.content_hashes()

    def by_hash(store):
        records = store.tracks()
        tokens, mask = store.tokens_for([r.track_id for r in records])
        return {r.content_hash: (r, tokens[k], mask[k]) for k, r in enumerate(records)}

    a, b = by_hash(sqlite), by_hash(lance)
    for digest, (rec_a, tok_a, mask_a) in a.items():
        rec_b, tok_b, mask_b = b[digest]
        assert (rec_a.location, rec_a.duration, rec_a.tags) == (rec_b.location, rec_b.duration, rec_b.tags)
        np.testing.assert_array_equal(mask_a, mask_b)
        np.testing.assert_array_equal(tok_a[mask_a], tok_b[mask_b])  # bit for bit (both fp16 on disk)

    model = tiny_made(music_dim=next(iter(a.values()))[1].shape[-1])
    fp = model_fingerprint(model)
    for store in (sqlite, lance):
        assert update_derived(store, model, fp) == len(TRACKS)
    ids_a, pooled_a = sqlite.pooled_matrix(fp)
    ids_b, pooled_b = lance.pooled_matrix(fp)
    hash_of_a = {r.track_id: r.content_hash for r in sqlite.tracks()}
    row_b = {int(i): k for k, i in enumerate(ids_b)}
    id_b = {h: b[h][0].track_id for h in b}
    order_b = [row_b[id_b[hash_of_a[int(i)]]] for i in ids_a]
    np.testing.assert_allclose(np.asarray(pooled_b)[order_b], pooled_a, rtol=1e-5, atol=1e-6)

    query = np.random.default_rng(0).standard_normal(pooled_a.shape[1]).astype(np.float32)
    ranked_a = [hash_of_a[int(ids_a[k])] for k in np.argsort(-(pooled_a @ query))]
    hash_of_b = {v: k for k, v in id_b.items()}
    ranked_b = [hash_of_b[int(ids_b[k])] for k in np.argsort(-(np.asarray(pooled_b) @ query))]
    assert ranked_a == ranked_b  # the search's first stage ranks the same tracks the same way

    ask = list(ids_a[::-1])
    rows_a = sqlite.derived_for(fp, ask)
    rows_b = lance.derived_for(fp, [id_b[hash_of_a[int(i)]] for i in ask])
    np.testing.assert_array_equal(rows_a.mask, rows_b.mask)
    np.testing.assert_allclose(rows_a.keys.astype(np.float32), rows_b.keys.astype(np.float32), atol=2e-3)
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
    np.testing.assert_allclose(scores_a, scores_b, atol=1e-3)
    assert np.argsort(-scores_a).tolist() == np.argsort(-scores_b).tolist()  # the same suggestions, in order


def test_index_to_store_reports_bad_files_and_a_rerun_embeds_nothing(tmp_path, music_dir, tiny_encoders):
    from mgsv_cli.index.store import IndexProgress

    class Seen(IndexProgress):
        def __init__(self):
            self.failures, self.stages = [], []

        def stage(self, name, total):
            self.stages.append(name)

        def failed(self, path, reason):
            self.failures.append(Path(path).name)

    uri = str(tmp_path / "lib.lance")
    seen = Seen()
    report = index_to_store(music_dir, uri, encoders=tiny_encoders, progress=seen, batch_size=2)
    assert (report.added, report.n_tracks, report.ok) == (len(TRACKS), len(TRACKS), False)
    assert sorted(seen.failures) == sorted(BAD_FILES) == sorted(Path(p).name for p, _ in report.failed)
    assert seen.stages == ["checking", "probing", "embedding"]
    store = open_store(uri)
    assert sorted(Path(r.location).name for r in store.tracks()) == sorted(Path(t[0]).name for t in TRACKS)
    assert {r.tags.get("title") for r in store.tracks()} == {t[3] for t in TRACKS}
    rerun = index_to_store(music_dir, uri, encoders=lambda: pytest.fail("nothing to embed"))
    assert (rerun.added, rerun.unchanged, len(rerun.failed)) == (0, len(TRACKS), len(BAD_FILES))
    with pytest.raises(UsageError):
        index_to_store(tmp_path / "no-music", uri, encoders=tiny_encoders)
