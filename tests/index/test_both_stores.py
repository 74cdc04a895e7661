"""`mgsv index` through the real CLI, the same scenario on an SQLite index (``--index X.sqlite``)
and a Lance store (``--store X.lance``): the one pipeline must behave alike on both.

Change detection by size and mtime (an unchanged file is not even read; a touched one only gets
its new mtime; a changed one replaces its track, whose derived rows go stale), remembered
failures (``--failed``, ``--retry-failed``, a fixed file, ``--prune``), vanished and renamed files.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from mgsv_cli.index.backend import open_store
from mgsv_cli.media import synth
from mgsv_cli.retrieval.derived import update_derived

pytest.register_assert_rewrite("_library_helpers")
from _library_helpers import BAD_FILES, TRACKS, run_cli  # noqa: E402
from _store_helpers import STORE_KINDS, store_at, store_flag, tiny_made  # noqa: E402

pytest_plugins = ["_library_helpers"]


class CountingEncoders:
    """Real tiny encoders, recording which files they were asked to embed."""

    def __init__(self, encoders):
        self._encoders = encoders
        self.embedded: list[str] = []

    def __getattr__(self, name):
        return getattr(self._encoders, name)

    def embed_tracks(self, paths):
        paths = list(paths)
        self.embedded.extend(Path(p).name for p in paths)
        return self._encoders.embed_tracks(paths)


@pytest.fixture
def counting(monkeypatch, tiny_encoders):
    """The CLI's encoder loading routed to counting tiny encoders; returns the list of loads."""
    import mgsv_cli.features.encoders as features

    loads: list[CountingEncoders] = []

    def load(*args, **kwargs):
        assert kwargs.get("kind") == "tiny"
        loads.append(CountingEncoders(tiny_encoders))
        return loads[-1]

    monkeypatch.setattr(features, "load_encoders", load)
    return loads


@pytest.fixture
def hashed(monkeypatch):
    """The names of the files whose content the pipeline hashes (it reads each one whole)."""
    from mgsv_cli.media import files

    names: list[str] = []
    real = files.content_hash

    def counting_hash(path):
        names.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(files, "content_hash", counting_hash)
    return names


def index_cli(capsys, music, target, *extra):
    return run_cli(capsys, "index", music, store_flag(target), target, "--encoders", "tiny", "--device", "cpu",
                   "--no-beats", *extra)


def failed_cli(capsys, target, *extra):
    return run_cli(capsys, "index", "--failed", store_flag(target), target, *extra)


def by_name(target) -> dict:
    with open_store(target) as store:
        return {Path(r.location).name: r for r in store.tracks()}


def failed_by_name(target) -> dict:
    with open_store(target) as store:
        return {Path(f.path).name: f for f in store.failed_files()}


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_unchanged_files_are_not_read_touched_ones_get_their_mtime_and_changed_ones_replace_their_track(
        capsys, good_music_dir, tmp_path, counting, hashed, kind):
    music, target = good_music_dir.resolve(), store_at(tmp_path, kind)
    first = index_cli(capsys, music, target)
    assert first.code == 0 and f"{len(TRACKS)} added" in first.out, first.err
    model, fp = tiny_made(music_dim=counting[0].music_dim), "tiny0"
    with open_store(target) as store:
        assert update_derived(store, model, fp) == len(TRACKS)
        states = store.file_states()
    old = by_name(target)

    hashed.clear()
    again = index_cli(capsys, music, target)
    assert again.code == 0, again.err
    assert f"0 added, 0 updated, {len(TRACKS)} unchanged, 0 pruned, 0 failed" in again.out
    assert hashed == [] and len(counting) == 1  # size and mtime as stored: not read, no network loaded

    alpha, beta = music / "01-alpha.wav", music / "02-beta.MP3"
    synth.synth_track(alpha, seconds=13.0, bpm=140.0, seed=7, title="Alpha v2")  # new content
    later = time.time() + 5
    os.utime(beta, (later, later))  # same bytes, new mtime
    result = index_cli(capsys, music, target)
    assert result.code == 0, result.err
    assert "0 added, 1 updated, 2 unchanged (1 touched)" in result.out
    assert sorted(hashed) == ["01-alpha.wav", "02-beta.MP3"]  # only the files whose size or mtime changed
    assert len(counting) == 2 and counting[-1].embedded == ["01-alpha.wav"]
    new = by_name(target)
    assert new["01-alpha.wav"].track_id == old["01-alpha.wav"].track_id  # the same track, replaced
    assert new["01-alpha.wav"].content_hash != old["01-alpha.wav"].content_hash
    assert new["01-alpha.wav"].duration == pytest.approx(13.0, abs=0.1) and new["01-alpha.wav"].title == "Alpha v2"
    assert new["02-beta.MP3"] == old["02-beta.MP3"]  # the record as it was (tokens included: same stamp)
    with open_store(target) as store:
        now = store.file_states()
        assert now[str(beta)] == states[str(beta)]._replace(mtime_ns=beta.stat().st_mtime_ns)
        assert now[str(beta)].mtime_ns != states[str(beta)].mtime_ns
        # Only the changed file's rows are stale: the touched one's content did not change.
        assert store.derived_missing(fp) == [old["01-alpha.wav"].track_id]
        assert update_derived(store, model, fp) == 1

    hashed.clear()
    settled = index_cli(capsys, music, target)
    assert f"0 added, 0 updated, {len(TRACKS)} unchanged, 0 pruned" in settled.out and hashed == []


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_failed_files_are_remembered_listed_retried_and_pruned(capsys, music_dir, media_src, tmp_path, counting,
                                                               kind):
    music, target = music_dir.resolve(), store_at(tmp_path, kind)
    first = index_cli(capsys, music, target)
    assert first.code == 1 and "3 added" in first.out and "3 failed" in first.out
    failed = failed_by_name(target)
    assert sorted(failed) == sorted(BAD_FILES)
    for name, row in failed.items():
        stat = (music / name).stat()
        assert (row.size, row.mtime_ns) == (stat.st_size, stat.st_mtime_ns) and row.reason
    assert failed["empty.ogg"].reason == "empty file (0 bytes)"
    loads = len(counting)

    again = index_cli(capsys, music, target)
    assert again.code == 0, again.err
    assert "0 added, 0 updated, 3 unchanged, 0 pruned, 0 failed" in again.out
    assert "3 file(s) that failed before are unchanged: skipped (`mgsv index --failed" in again.out
    assert again.err == "" and len(counting) == loads  # not even probed again

    listed = failed_cli(capsys, target)
    assert listed.code == 0 and listed.err == "" and f"could not be indexed into {target}" in listed.out
    for name in BAD_FILES:
        assert str(music / name) in listed.out
    assert "empty file (0 bytes)" in listed.out
    report = json.loads(failed_cli(capsys, target, "--json").out)
    assert report["index"] == target
    assert sorted(Path(f["path"]).name for f in report["failed"]) == sorted(BAD_FILES)
    assert all(f["exists"] and f["reason"] and f["size"] is not None for f in report["failed"])
    (music / "sub").mkdir(exist_ok=True)
    under = run_cli(capsys, "index", "--failed", store_flag(target), target, music / "sub")
    assert under.code == 0 and "no failed files under" in under.out

    retried = index_cli(capsys, music, target, "--retry-failed")
    assert retried.code == 1 and "3 failed" in retried.out
    assert all(name in retried.err for name in BAD_FILES)

    shutil.copyfile(media_src / "spare.flac", music / "broken.mp3")  # fixed: real audio now
    fixed = index_cli(capsys, music, target)
    assert fixed.code == 0, fixed.err
    assert "1 added" in fixed.out and "2 file(s) that failed before are unchanged" in fixed.out
    assert sorted(failed_by_name(target)) == ["empty.ogg", "notes-not-audio.wav"]
    assert "broken.mp3" in by_name(target)

    (music / "notes-not-audio.wav").unlink()
    kept = index_cli(capsys, music, target)
    assert kept.code == 0 and "notes-not-audio.wav" in failed_by_name(target)  # only --prune forgets
    listed = failed_cli(capsys, target)
    assert "notes-not-audio.wav" in listed.out and "gone: `--prune` forgets it" in listed.out
    pruned = index_cli(capsys, music, target, "--prune")
    assert pruned.code == 0 and "1 failed file(s) no longer exist: forgotten" in pruned.out
    assert sorted(failed_by_name(target)) == ["empty.ogg"]

    (music / "empty.ogg").write_bytes(b"still not audio, but no longer empty")
    changed = index_cli(capsys, music, target)
    assert changed.code == 1 and "empty.ogg" in changed.err  # changed: tried again by itself
    assert failed_by_name(target)["empty.ogg"].reason != "empty file (0 bytes)"


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_vanished_files_are_pruned_only_when_asked_and_a_renamed_file_reuses_its_tokens(
        capsys, good_music_dir, tmp_path, counting, kind):
    music, target = good_music_dir.resolve(), store_at(tmp_path, kind)
    assert index_cli(capsys, music, target).code == 0
    before = by_name(target)
    loads = len(counting)
    (music / "sub" / "03-gamma.flac").unlink()
    kept = index_cli(capsys, music, target)
    assert kept.code == 0 and "1 indexed file(s) no longer exist: `--prune` drops them" in kept.out
    assert len(by_name(target)) == 3

    pruned = index_cli(capsys, music, target, "--prune")
    assert pruned.code == 0 and "1 pruned" in pruned.out
    assert sorted(by_name(target)) == ["01-alpha.wav", "02-beta.MP3"]

    (music / "01-alpha.wav").rename(music / "renamed.wav")
    renamed = index_cli(capsys, music, target, "--prune")
    assert renamed.code == 0 and "1 added" in renamed.out and "1 pruned" in renamed.out
    assert "tokens reused" in renamed.out
    assert len(counting) == loads  # no network needed at all
    after = by_name(target)
    assert sorted(after) == ["02-beta.MP3", "renamed.wav"]
    for key in ("content_hash", "duration", "tags"):
        assert getattr(after["renamed.wav"], key) == getattr(before["01-alpha.wav"], key)
    with open_store(target) as store:
        moved, other = store.tokens_for([after["renamed.wav"].track_id, after["02-beta.MP3"].track_id])[0]
    assert not np.array_equal(moved, other) and np.isfinite(moved).all()
