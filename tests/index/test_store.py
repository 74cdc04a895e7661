"""`mgsv index`: the SQLite music index, end to end through the CLI with tiny encoders."""
from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from mgsv_cli.errors import IndexDatabaseError, UsageError
from mgsv_cli.index.locking import writer_lock
from mgsv_cli.index.pipeline import index_folder
from mgsv_cli.index.sqlite_store import SqliteTrackStore
from mgsv_cli.media import files, synth
from mgsv_cli.media.beats import BeatGrid

pytest.register_assert_rewrite("_library_helpers")  # its asserts are test asserts too

from _library_helpers import BAD_FILES, TRACKS, db_meta, db_rows, integrity, run_cli  # noqa: E402

# Fixtures shared with test_suggest.py (media generated and tracks indexed once per session).
pytest_plugins = ["_library_helpers"]

REPO = Path(__file__).resolve().parents[2]


class CountingEncoders:
    """Real tiny encoders, recording which files they were asked to embed."""

    def __init__(self, encoders, encoder_id: str | None = None):
        self._encoders = encoders
        self.embedded: list[str] = []
        if encoder_id is not None:
            self.encoder_id = encoder_id

    def __getattr__(self, name):
        return getattr(self._encoders, name)

    def embed_tracks(self, paths):
        paths = list(paths)
        self.embedded.extend(Path(p).name for p in paths)
        return self._encoders.embed_tracks(paths)


def stored_beats(track, index):
    """The beat grid an index keeps for the file ``track`` (None: no index, not indexed, no grid)."""
    from mgsv_cli.errors import MgsvError

    try:
        opened = SqliteTrackStore.open(index)
    except MgsvError:
        return None
    with opened:
        record = opened.find(track)
        return opened.beats_for([record.id])[0] if record is not None else None


@pytest.fixture
def counting(monkeypatch, tiny_encoders):
    """Route the CLI's encoder loading to counting tiny encoders; returns the list of loads."""
    import mgsv_cli.features.encoders as features

    loads: list[CountingEncoders] = []

    def load(*args, **kwargs):
        assert kwargs.get("kind") == "tiny"
        loads.append(CountingEncoders(tiny_encoders))
        return loads[-1]

    monkeypatch.setattr(features, "load_encoders", load)
    return loads


def embedded_names(loads) -> list[str]:
    return [name for enc in loads for name in enc.embedded]


def index_cli(capsys, music: Path, index: Path, *extra: str, beats: bool = False):
    """`mgsv index` with tiny encoders; beat detection only where a test looks at beats (it is slow)."""
    return run_cli(capsys, "index", music, "--index", index, "--encoders", "tiny", "--device", "cpu",
                   *([] if beats else ["--no-beats"]), *extra)


def test_index_embeds_good_files_and_reports_bad_ones(capsys, music_dir, tmp_path, tiny_encoders):
    index = tmp_path / "index.sqlite"
    result = index_cli(capsys, music_dir, index, beats=True)

    assert result.code == 1, result.err  # something failed
    for name in BAD_FILES:
        assert name in result.err
    assert "cover.jpg" not in result.err and ".hidden" not in result.err
    assert "3 added" in result.out and "3 failed" in result.out
    rows = db_rows(index)
    assert [Path(r["path"]).name for r in rows] == ["01-alpha.wav", "02-beta.MP3", "03-gamma.flac"]
    meta = db_meta(index)
    assert meta["encoder_id"] == tiny_encoders.encoder_id and meta["schema_version"] == "1"
    for row, (rel, seconds, bpm, title, artist) in zip(rows, TRACKS):
        assert row["path"] == str((music_dir / rel).resolve())
        assert row["duration"] == pytest.approx(seconds, abs=0.1)
        assert (row["title"], row["artist"]) == (title, artist)
        assert row["n_windows"] == 96 and row["feat_dim"] == tiny_encoders.music_dim
        assert row["feats_bytes"] == 96 * tiny_encoders.music_dim * 2  # float16
        assert row["sample_rate"] == synth.SAMPLE_RATE and row["size"] > 0 and len(row["content_hash"]) == 32
        assert row["encoder_id"] == tiny_encoders.encoder_id and row["indexed_at"]
        grid = BeatGrid.from_json(row["beats"])  # the hook for beat-aligned cuts
        assert stored_beats(row["path"], index) == grid.to_dict()
        assert grid.tempo_bpm == pytest.approx(bpm, rel=0.05) or grid.tempo_bpm == pytest.approx(2 * bpm, rel=0.05) \
            or grid.tempo_bpm == pytest.approx(bpm / 2, rel=0.05)
        assert all(0 <= b <= seconds for b in grid.beats)
    # The stored mask marks the AST windows whose centre lies inside the track.
    with SqliteTrackStore.open(index) as opened:
        ids, feats, mask = next(opened.iter_tokens())
        assert feats.shape == (3, 96, tiny_encoders.music_dim)
        for m, (_, seconds, *_) in zip(mask, TRACKS):
            assert int(m.sum()) == int(seconds // 2.5) + 1
        assert np.isfinite(feats).all()
    assert integrity(index) == "ok"
    assert stored_beats(music_dir / "broken.mp3", index) is None  # not indexed
    assert stored_beats(music_dir / "01-alpha.wav", tmp_path / "nowhere.sqlite") is None


def by_name(index: Path) -> dict[str, dict]:
    return {Path(r["path"]).name: r for r in db_rows(index)}


def test_reindex_unchanged_is_a_no_op_without_loading_encoders(capsys, indexed_music, counting):
    music, index = indexed_music
    before_rows, before_meta = db_rows(index), db_meta(index)

    result = index_cli(capsys, music, index)
    assert result.code == 0, result.err
    assert "0 added, 0 updated, 3 unchanged, 0 pruned, 0 failed — 3 tracks" in result.out
    assert counting == []  # nothing to embed: the encoders were never even loaded
    assert db_rows(index) == before_rows and db_meta(index) == before_meta


def test_modified_file_is_reembedded_and_touched_file_only_gets_its_mtime(capsys, indexed_music, counting):
    music, index = indexed_music
    alpha, beta = music / "01-alpha.wav", music / "02-beta.MP3"
    old = by_name(index)
    generation = int(db_meta(index)["generation"])

    synth.synth_track(alpha, seconds=13.0, bpm=140.0, seed=7, title="Alpha v2")  # new content
    later = time.time() + 5
    os.utime(beta, (later, later))  # same bytes, new mtime
    result = index_cli(capsys, music, index)

    assert result.code == 0, result.err
    assert "0 added, 1 updated, 2 unchanged (1 touched)" in result.out
    assert embedded_names(counting) == ["01-alpha.wav"]
    new = by_name(index)
    assert new["01-alpha.wav"]["id"] == old["01-alpha.wav"]["id"]  # updated in place
    assert new["01-alpha.wav"]["content_hash"] != old["01-alpha.wav"]["content_hash"]
    assert new["01-alpha.wav"]["duration"] == pytest.approx(13.0, abs=0.1)
    assert new["01-alpha.wav"]["title"] == "Alpha v2"
    assert new["02-beta.MP3"]["mtime_ns"] == beta.stat().st_mtime_ns != old["02-beta.MP3"]["mtime_ns"]
    assert {k: v for k, v in new["02-beta.MP3"].items() if k != "mtime_ns"} == \
        {k: v for k, v in old["02-beta.MP3"].items() if k != "mtime_ns"}
    assert int(db_meta(index)["generation"]) == generation + 1  # only the re-embedded track changed tokens


def test_force_reembeds_everything(capsys, indexed_music, counting):
    music, index = indexed_music
    old = by_name(index)
    result = index_cli(capsys, music, index, "--force")
    assert result.code == 0 and "0 added, 3 updated" in result.out
    assert sorted(embedded_names(counting)) == sorted(old)
    new = by_name(index)
    assert all(new[name]["indexed_at"] >= old[name]["indexed_at"] for name in old) and len(new) == 3


def test_prune_drops_vanished_files_only_when_asked(capsys, indexed_music, counting):
    music, index = indexed_music
    (music / "sub" / "03-gamma.flac").unlink()

    kept = index_cli(capsys, music, index)
    assert kept.code == 0 and "1 indexed file(s) no longer exist: `--prune` drops them" in kept.out
    assert len(db_rows(index)) == 3

    pruned = index_cli(capsys, music, index, "--prune")
    assert pruned.code == 0 and "1 pruned" in pruned.out
    assert sorted(by_name(index)) == ["01-alpha.wav", "02-beta.MP3"]
    assert counting == [] and integrity(index) == "ok"


def test_renamed_file_reuses_its_tokens(capsys, indexed_music, counting):
    music, index = indexed_music
    before = by_name(index)
    (music / "01-alpha.wav").rename(music / "renamed.wav")

    result = index_cli(capsys, music, index, "--prune")
    assert result.code == 0 and "1 added" in result.out and "1 pruned" in result.out
    assert "tokens reused" in result.out
    assert counting == []  # no network needed at all
    after = by_name(index)
    assert set(after) == {"renamed.wav", "02-beta.MP3", "03-gamma.flac"}
    for key in ("content_hash", "duration", "title", "artist", "encoder_id", "feats_bytes"):
        assert after["renamed.wav"][key] == before["01-alpha.wav"][key]
    with SqliteTrackStore.open(index) as opened:
        ids = {t.path: t.id for t in opened.tracks()}
        moved, _ = opened.tokens_for([ids[str(music / "renamed.wav")]])
        other, _ = opened.tokens_for([ids[str(music / "02-beta.MP3")]])
    assert moved.shape == other.shape and not np.array_equal(moved, other)


def test_other_encoders_are_refused_unless_forced(indexed_music, media_src, tiny_encoders):
    music, index = indexed_music
    shutil.copy2(media_src / "spare.flac", music / "new.flac")  # something to embed
    other = CountingEncoders(tiny_encoders, encoder_id="tiny-other-weights")

    with pytest.raises(IndexDatabaseError, match="--force"):
        index_folder(music, index, encoders=other, detect_beats=False)
    assert len(db_rows(index)) == 3 and other.embedded == []

    (music / "sub" / "03-gamma.flac").unlink()
    (music / "02-beta.MP3").unlink()
    report = index_folder(music, index, encoders=other, force=True, detect_beats=False)
    assert report.ok and (report.added, report.updated) == (1, 1)
    assert sorted(other.embedded) == ["01-alpha.wav", "new.flac"]
    assert {r["encoder_id"] for r in db_rows(index)} == {"tiny-other-weights"}
    assert sorted(by_name(index)) == ["01-alpha.wav", "new.flac"]  # nothing left from the old encoders
    assert db_meta(index)["encoder_id"] == "tiny-other-weights"


def test_other_encoder_kind_is_refused_before_loading_anything(capsys, indexed_music, counting):
    music, index = indexed_music
    before = db_rows(index)
    result = run_cli(capsys, "index", music, "--index", index, "--encoders", "pretrained", "--offline")
    assert result.code == IndexDatabaseError.exit_code
    assert "tiny encoders" in result.err and "--encoders tiny" in result.err and "--force" in result.err
    assert db_rows(index) == before


def test_bad_index_files_and_folders_are_clear_errors(capsys, good_music_dir, tmp_path, counting):
    foreign = tmp_path / "foreign.sqlite"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE songs (name TEXT)")
    conn.commit()
    conn.close()
    before = foreign.read_bytes()
    result = index_cli(capsys, good_music_dir, foreign)
    assert result.code == IndexDatabaseError.exit_code and "not an mgsv music index" in result.err
    assert foreign.read_bytes() == before  # never touched

    text = tmp_path / "notes.txt"
    text.write_text("hello " * 1000)
    result = index_cli(capsys, good_music_dir, text)
    assert result.code == IndexDatabaseError.exit_code and "Traceback" not in result.err
    assert text.read_text() == "hello " * 1000

    result = index_cli(capsys, tmp_path / "nowhere", tmp_path / "index.sqlite")
    assert result.code == UsageError.exit_code and "does not exist" in result.err


# A runner that slows the real CLI down between tracks so the test can kill it mid-run.
SLOW_RUNNER = textwrap.dedent("""
    import sys, time
    import mgsv_cli.features.encoders as features

    real_load = features.load_encoders

    class Slow:
        def __init__(self, encoders):
            self._encoders = encoders
        def __getattr__(self, name):
            return getattr(self._encoders, name)
        def embed_tracks(self, paths):
            for item in self._encoders.embed_tracks(paths):
                yield item          # the library commits this track before asking for the next
                time.sleep(float(sys.argv[1]))

    features.load_encoders = lambda *a, **k: Slow(real_load(*a, **k))
    from mgsv_cli.cli import main
    main(sys.argv[2:])
""")


def test_ctrl_c_keeps_committed_tracks_and_says_how_to_resume(capsys, good_music_dir, tmp_path, monkeypatch,
                                                               tiny_encoders):
    import mgsv_cli.features.encoders as features

    class InterruptedAfterFirstTrack(CountingEncoders):
        def embed_tracks(self, paths):
            results = super().embed_tracks(paths)
            yield next(results)
            raise KeyboardInterrupt  # what Ctrl-C raises in the main thread while track 2 is embedded

    monkeypatch.setattr(features, "load_encoders", lambda *a, **k: InterruptedAfterFirstTrack(tiny_encoders))
    index = tmp_path / "index.sqlite"
    result = index_cli(capsys, good_music_dir, index)
    assert result.code == 130 and "Traceback" not in result.err
    assert "interrupted; 1 track(s) in the index: run the same command again to resume" in result.err
    assert integrity(index) == "ok" and len(db_rows(index)) == 1


def test_killed_index_run_resumes_and_concurrent_run_fails(capsys, good_music_dir, tmp_path, counting):
    index = tmp_path / "index.sqlite"
    runner = tmp_path / "slow_index.py"
    runner.write_text(SLOW_RUNNER)
    proc = subprocess.Popen(
        [sys.executable, str(runner), "30", "index", str(good_music_dir), "--index", str(index),
         "--encoders", "tiny", "--device", "cpu", "--no-beats"],
        env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            if index.exists() and _count_committed(index) >= 1:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert _count_committed(index) == 1
        # While that run holds the index, a second one waits briefly, then fails clearly.
        second = index_cli(capsys, good_music_dir, index)
        assert second.code == IndexDatabaseError.exit_code
        assert "another `mgsv index` is updating" in second.err and "Traceback" not in second.err
    finally:
        proc.kill()  # SIGKILL: no cleanup of any kind
        proc.wait()
    assert proc.returncode == -9
    assert integrity(index) == "ok" and len(db_rows(index)) == 1

    resumed = index_cli(capsys, good_music_dir, index)
    assert resumed.code == 0, resumed.err
    assert "2 added, 0 updated, 1 unchanged" in resumed.out
    assert len(embedded_names(counting)) == 2  # the committed track was not embedded again
    assert integrity(index) == "ok" and len(db_rows(index)) == 3


def _count_committed(index: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{index}?mode=ro", uri=True, timeout=1)
        try:
            return conn.execute("SELECT count(*) FROM tracks").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return 0  # the schema is not there yet


def test_writer_lock_is_exclusive_and_released(tmp_path):
    index = tmp_path / "index.sqlite"
    with writer_lock(index, timeout=0.2):
        with pytest.raises(IndexDatabaseError, match="another `mgsv index`"):
            with writer_lock(index, timeout=0.2):
                pass
    with writer_lock(index, timeout=0.2):  # released on exit
        pass


def test_scan_finds_audio_by_extension_recursively(media_src):
    found = files.scan_audio_files(media_src / "music")
    assert sorted(p.name for p in found) == sorted(["01-alpha.wav", "02-beta.MP3", "03-gamma.flac", *BAD_FILES])
    assert found == sorted(found) and all(p.is_absolute() for p in found)


def test_content_hash_sees_a_same_size_edit_in_the_middle(tmp_path):
    a = tmp_path / "a.wav"
    data = bytearray(os.urandom(5 << 20))
    a.write_bytes(data)
    first = files.content_hash(a)
    data[len(data) // 2] ^= 0xFF
    a.write_bytes(data)
    assert files.content_hash(a) != first and len(first) == 32
