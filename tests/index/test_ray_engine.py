"""`mgsv index --engine ray`: Ray Data (a local Ray of 2 CPUs) into a Lance store, with tiny encoders.

One Ray instance serves the whole module (starting one costs seconds). The store is
compared with the SQLite index `mgsv index` builds from the same folder: the same tracks
and tokens (by location: the two backends number tracks differently) and the same
suggestions; a killed AST actor or an interrupted driver loses and duplicates nothing.
The Ray engine runs the local engine's plan: an unchanged file is not read, a touched one
only gets its mtime, a changed one replaces its track, failures are remembered in
``failed.lance``, vanished files are pruned when asked.
"""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray")
pytest.importorskip("lance")

from mgsv_cli.errors import IndexDatabaseError, UsageError  # noqa: E402
from mgsv_cli.index.backend import open_store  # noqa: E402
from mgsv_cli.index.lance_store import track_key  # noqa: E402
from mgsv_cli.index.pipeline import IndexProgress  # noqa: E402
from mgsv_cli.index.ray_engine import AstEmbedder, index_with_ray, list_audio  # noqa: E402

pytest.register_assert_rewrite("_library_helpers")
from _library_helpers import BAD_FILES, TRACKS, run_cli  # noqa: E402

pytest_plugins = ["_library_helpers"]

TINY = ("--encoders", "tiny", "--device", "cpu", "--no-beats")


@pytest.fixture(scope="module")
def local_ray():
    import logging

    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    yield
    ray.shutdown()


def tracks_by_location(uri: str) -> dict[str, tuple]:
    """location -> (record, tokens float32 [96, D], mask bool [96]) of every stored track."""
    with open_store(uri) as store:
        records = store.tracks()
        tokens, mask = store.tokens_for([r.track_id for r in records])
    assert len({r.location for r in records}) == len(records)  # each file once
    return {r.location: (r, tokens[k], mask[k]) for k, r in enumerate(records)}


def suggestions(capsys, video: Path, index) -> list[dict]:
    result = run_cli(capsys, "suggest", video, "--index", index, "--untrained", "--json", "--top", "3",
                     "--device", "cpu", "--no-server")
    assert result.code == 0, result.err
    [obj] = [json.loads(line) for line in result.out.splitlines() if line.strip()]
    return obj["suggestions"]


def test_a_cli_run_shows_mgsv_lines_only(capfd, monkeypatch, music_dir, tmp_path):
    """Ray's C++ core writes to fd 2 (capfd sees it, capsys would not): no `core_worker.cc` line,
    no banner, only mgsv's own report of each bad file. First in this module: it starts Ray
    the way the CLI does, before `local_ray` has."""
    import ray

    from mgsv_cli import cli

    if ray.is_initialized():
        ray.shutdown()
    monkeypatch.delenv("RAY_BACKEND_LOG_LEVEL", raising=False)  # a level the user sets wins
    capfd.readouterr()
    with pytest.raises(SystemExit) as exited:
        cli.main([str(a) for a in ("index", music_dir, "--engine", "ray", "--store", tmp_path / "c.lance", *TINY)])
    out, err = capfd.readouterr()
    assert exited.value.code == 1 and f"{len(TRACKS)} added" in out, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == len(BAD_FILES) and all(line.startswith("✗ ") for line in lines), err
    assert ".cc:" not in err + out and "Ray instance" not in err + out
    assert "RAY_BACKEND_LOG_LEVEL" not in os.environ  # set only while Ray started


def test_a_failing_ray_run_is_one_line_naming_the_cause(local_ray, good_music_dir, tmp_path, capfd):
    """The remote exception's own line, not Ray's coloured `ray::MapWorker(...)` header, and
    none of Ray Data's console logs of the failure (its log files keep them)."""

    class BrokenEmbedder(AstEmbedder):
        def __call__(self, batch):
            raise ImportError("cannot import name 'X' from 'y'")

    with pytest.raises(IndexDatabaseError) as caught:
        index_with_ray(good_music_dir, str(tmp_path / "c.lance"), encoder_kind="tiny", device="cpu",
                       detect_beats=False, embedder=BrokenEmbedder)
    assert str(caught.value).startswith("the Ray run failed: ImportError: cannot import name 'X' from 'y';")
    assert "\x1b" not in str(caught.value) and "ray::" not in str(caught.value)
    out, err = capfd.readouterr()
    assert "UDF" not in err + out and "Dataset execution will now abort" not in err + out


def test_ray_store_holds_the_tokens_of_the_local_index_and_gives_the_same_suggestions(
        capsys, local_ray, music_dir, media_src, tmp_path):
    sqlite, lance = tmp_path / "index.sqlite", str(tmp_path / "catalog.lance")
    local = run_cli(capsys, "index", music_dir, "--index", sqlite, *TINY)
    assert local.code == 1, local.err  # the bad files failed
    result = run_cli(capsys, "index", music_dir, "--engine", "ray", "--store", lance, *TINY)
    assert result.code == 1, result.err
    assert f"{len(TRACKS)} added" in result.out and f"{len(BAD_FILES)} failed" in result.out
    listed = result.out.split("could not be indexed", 1)[1]
    for name in BAD_FILES:  # reported as they fail (stderr) and listed at the end (stdout)
        assert name in result.err and name in listed

    a, b = tracks_by_location(str(sqlite)), tracks_by_location(lance)
    assert a.keys() == b.keys() and len(b) == len(TRACKS)
    for location, (rec_a, tok_a, mask_a) in a.items():
        rec_b, tok_b, mask_b = b[location]
        assert (rec_a.content_hash, rec_a.tags) == (rec_b.content_hash, rec_b.tags)
        assert rec_b.track_id == track_key(location)
        assert rec_a.duration == pytest.approx(rec_b.duration)
        np.testing.assert_array_equal(mask_a, mask_b)
        # The same windows through the same network; only how windows share a batch differs.
        np.testing.assert_allclose(tok_a[mask_a], tok_b[mask_b], rtol=2e-3, atol=2e-3)
    clip = media_src / "clips" / "clip0.mp4"
    from_sqlite, from_lance = suggestions(capsys, clip, sqlite), suggestions(capsys, clip, lance)
    assert [s["track"] for s in from_lance] == [s["track"] for s in from_sqlite]
    for x, y in zip(from_lance, from_sqlite):
        assert x["score"] == pytest.approx(y["score"], abs=5e-3)

    # The failures were remembered (failed.lance): unchanged, they are skipped and the rerun is clean.
    again = run_cli(capsys, "index", music_dir, "--engine", "ray", "--store", lance, *TINY)
    assert again.code == 0 and "0 added" in again.out and f"{len(TRACKS)} unchanged" in again.out, again.err
    assert f"{len(BAD_FILES)} file(s) that failed before are unchanged: skipped" in again.out
    assert tracks_by_location(lance).keys() == a.keys()
    listed = run_cli(capsys, "index", "--failed", "--store", lance)
    assert listed.code == 0 and all(name in listed.out for name in BAD_FILES), listed.err
    # The local engine writes the same store layout (`--engine local --store`).
    other = str(tmp_path / "local.lance")
    result = run_cli(capsys, "index", music_dir, "--store", other, *TINY)
    assert result.code == 1 and f"{len(TRACKS)} added" in result.out, result.err
    local_tracks = tracks_by_location(other)
    assert local_tracks.keys() == a.keys()
    assert {loc: r.track_id for loc, (r, _, _) in local_tracks.items()} == \
        {loc: r.track_id for loc, (r, _, _) in tracks_by_location(lance).items()}  # ids from the location


def test_an_interrupted_run_resumes_and_a_killed_actor_loses_and_duplicates_nothing(local_ray, good_music_dir,
                                                                                     tmp_path):
    class StopOnSecond(IndexProgress):
        """Ctrl-C in the driver while the second file comes back (the first is committed)."""

        def __init__(self):
            self.done = 0
            self.report = None

        def advance(self, name, amount=1.0, detail=""):
            self.done += 1
            if self.done == 2:
                raise KeyboardInterrupt

        def interrupted(self, report):
            self.report = report

    source = "file://" + str(good_music_dir.resolve())  # the object-store path: listed and read through pyarrow
    assert len(list_audio(source)) == len(TRACKS)
    uri = str(tmp_path / "catalog.lance")
    options = dict(encoder_kind="tiny", device="cpu", detect_beats=False, tracks_per_batch=1, commit_every=1)
    stopping = StopOnSecond()
    with pytest.raises(KeyboardInterrupt):
        index_with_ray(source, uri, progress=stopping, **options)
    kept = stopping.report.n_tracks  # what was kept is said to the progress, and the interrupt goes on
    assert 1 <= kept < len(TRACKS) and stopping.report.interrupted
    assert len(tracks_by_location(uri)) == kept

    marker = tmp_path / "killed-once"
    stored = set(tracks_by_location(uri))
    victim = next(row["location"] for row in list_audio(source) if row["location"] not in stored)

    class DyingEmbedder(AstEmbedder):
        """Kills its own process (SIGKILL: no cleanup) the first time it is given the victim."""

        def __call__(self, batch):
            if victim in batch.column("location").to_pylist() and not marker.exists():
                marker.write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)
            return super().__call__(batch)

    report = index_with_ray(source, uri, embedder=DyingEmbedder, **options)
    assert marker.exists()  # the actor did die mid-run, and Ray retried its batch on a new one
    assert (report.added, report.unchanged, report.failed) == (len(TRACKS) - kept, kept, [])
    by_location = tracks_by_location(uri)  # each file exactly once
    assert report.n_tracks == len(by_location) == len(TRACKS)
    assert sorted(Path(loc).name for loc in by_location) == sorted(Path(t[0]).name for t in TRACKS)
    assert all(loc.startswith("file://") for loc in by_location)


def test_cli_mistakes_are_one_line_errors(capsys, tmp_path, good_music_dir):
    lance = str(tmp_path / "catalog.lance")
    cases = [
        (("--engine", "ray"), "--store"),
        (("--engine", "ray", "--store", lance, "--ray-address", "127.0.0.1:1"), "no Ray cluster answers"),
        (("--engine", "ray", "--store", lance, "--ray-address", "not-an-address"), "HOST:PORT"),
        (("--engine", "ray", "--store", tmp_path / "index.sqlite"), "Lance track store"),
        (("--engine", "spark", "--store", lance), "expected local or ray"),
        (("--ray-address", "auto", "--store", lance), "--engine ray"),
        (("--keys", "int8"), "--keys goes with --store"),
        (("--store", lance, "--keys", "int4"), "--keys 'int4'"),
    ]
    for extra, message in cases:
        result = run_cli(capsys, "index", good_music_dir, *extra, *TINY)
        assert result.code == 2, (extra, result.err)
        assert message in result.err and "Traceback" not in result.err, (extra, result.err)
        assert len(result.err.strip().splitlines()) == 1, result.err
    result = run_cli(capsys, "index", "s3://bucket/music", *TINY)
    assert result.code == 2 and "--engine ray" in result.err
    assert not (tmp_path / "catalog.lance").exists()  # nothing written by a refused command
    with pytest.raises(UsageError, match="does not exist"):
        index_with_ray(tmp_path / "no-music", lance, encoder_kind="tiny")


def nothing_to_embed() -> type:
    """An AST actor class that fails the run if any file reaches it to be embedded. Made in a function:
    Ray's workers cannot import this module, so the class must travel by value (cloudpickle)."""

    class NothingToEmbed(AstEmbedder):
        def __call__(self, batch):
            statuses = zip(batch.column("location").to_pylist(), batch.column("status").to_pylist())
            wanted = [location for location, status in statuses if status == "embed"]
            if wanted:
                raise RuntimeError(f"asked to embed {wanted}")
            return super().__call__(batch)

    return NothingToEmbed


RAY_TINY = dict(encoder_kind="tiny", device="cpu", detect_beats=False)


def test_a_rerun_plans_as_the_local_engine_unchanged_files_unread_touched_changed_and_renamed(
        local_ray, good_music_dir, tmp_path):
    from _store_helpers import tiny_made

    from mgsv_cli.retrieval.derived import update_derived

    music = good_music_dir.resolve()
    uri = str(tmp_path / "catalog.lance")
    assert index_with_ray(music, uri, **RAY_TINY).added == len(TRACKS)
    model, fp = tiny_made(music_dim=64), "tiny0"
    with open_store(uri) as store:
        assert update_derived(store, model, fp) == len(TRACKS)
    before = tracks_by_location(uri)

    # Other bytes of the same size under the same mtime: a task that read the file would see new
    # content and embed it; the plan trusts size and mtime, so nothing is read at all.
    gamma = music / "sub" / "03-gamma.flac"
    stat = gamma.stat()
    data = bytearray(gamma.read_bytes())
    data[-64:] = bytes(64)
    gamma.write_bytes(bytes(data))
    os.utime(gamma, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = index_with_ray(music, uri, embedder=nothing_to_embed(), **RAY_TINY)
    assert (again.added, again.updated, again.unchanged, again.touched, again.failed) == (0, 0, len(TRACKS), 0, [])

    alpha, beta = music / "01-alpha.wav", music / "02-beta.MP3"
    from mgsv_cli.media import synth

    synth.synth_track(alpha, seconds=13.0, bpm=140.0, seed=7, title="Alpha v2")  # new content
    later = stat.st_mtime + 5
    os.utime(beta, (later, later))  # same bytes, new mtime
    changed = index_with_ray(music, uri, **RAY_TINY)
    assert (changed.added, changed.updated, changed.unchanged, changed.touched) == (0, 1, 2, 1)
    after = tracks_by_location(uri)
    assert after[str(alpha)][0].track_id == before[str(alpha)][0].track_id == track_key(str(alpha))
    assert after[str(alpha)][0].content_hash != before[str(alpha)][0].content_hash
    assert after[str(alpha)][0].title == "Alpha v2"
    assert after[str(beta)][0] == before[str(beta)][0]  # the record as it was: only its mtime is new
    with open_store(uri) as store:
        assert store.file_states()[str(beta)].mtime_ns == beta.stat().st_mtime_ns
        assert store.derived_missing(fp) == [track_key(str(alpha))]  # only the changed file's rows went stale
    settled = index_with_ray(music, uri, embedder=nothing_to_embed(), **RAY_TINY)
    assert (settled.unchanged, settled.touched, settled.updated) == (len(TRACKS), 0, 0)

    # A renamed file is embedded again (no reuse on Ray); the old name is dropped with prune.
    beta.rename(music / "renamed.mp3")
    renamed = index_with_ray(music, uri, prune=True, **RAY_TINY)
    assert (renamed.added, renamed.reused, renamed.pruned, renamed.n_tracks) == (1, 0, 1, len(TRACKS))
    assert sorted(Path(loc).name for loc in tracks_by_location(uri)) == ["01-alpha.wav", "03-gamma.flac",
                                                                         "renamed.mp3"]
    forced = index_with_ray(music, uri, force=True, **RAY_TINY)  # every file again: updates, none added
    assert (forced.added, forced.updated, forced.unchanged) == (0, len(TRACKS), 0)


def test_failed_files_are_remembered_in_the_store_retried_when_asked_and_pruned(capsys, local_ray, music_dir,
                                                                                tmp_path):
    music = music_dir.resolve()
    uri = str(tmp_path / "catalog.lance")
    first = index_with_ray(music, uri, **RAY_TINY)
    assert first.added == len(TRACKS) and sorted(Path(p).name for p, _ in first.failed) == sorted(BAD_FILES)
    with open_store(uri) as store:
        assert store.dataset_uri("failed") == str(Path(uri) / "failed.lance")
        failed = {Path(f.path).name: f for f in store.failed_files()}
    assert sorted(failed) == sorted(BAD_FILES) and failed["empty.ogg"].reason == "empty file (0 bytes)"
    for name, row in failed.items():
        stat = (music / name).stat()
        assert (row.size, row.mtime_ns) == (stat.st_size, stat.st_mtime_ns) and row.reason

    rerun = index_with_ray(music, uri, embedder=nothing_to_embed(), **RAY_TINY)  # unchanged failures: skipped
    assert (rerun.failed, rerun.skipped_failed, rerun.unchanged) == ([], len(BAD_FILES), len(TRACKS))
    retried = index_with_ray(music, uri, retry_failed=True, embedder=nothing_to_embed(), **RAY_TINY)
    assert sorted(Path(p).name for p, _ in retried.failed) == sorted(BAD_FILES) and retried.skipped_failed == 0

    (music / "notes-not-audio.wav").unlink()
    (music / "01-alpha.wav").unlink()
    kept = index_with_ray(music, uri, embedder=nothing_to_embed(), **RAY_TINY)
    assert (kept.missing, kept.pruned, kept.forgotten_failed, kept.n_tracks) == (1, 0, 0, len(TRACKS))
    listed = run_cli(capsys, "index", "--failed", "--store", uri)
    assert "notes-not-audio.wav" in listed.out and "gone: `--prune` forgets it" in listed.out
    pruned = run_cli(capsys, "index", music, "--engine", "ray", "--store", uri, "--prune", *TINY)  # the CLI's way
    assert pruned.code == 0, pruned.err
    assert "0 added, 0 updated, 2 unchanged, 1 pruned, 0 failed" in pruned.out
    assert "1 failed file(s) no longer exist: forgotten" in pruned.out
    assert len(tracks_by_location(uri)) == len(TRACKS) - 1
    listed = run_cli(capsys, "index", "--failed", "--store", uri, "--json")
    assert sorted(Path(f["path"]).name for f in json.loads(listed.out)["failed"]) == ["broken.mp3", "empty.ogg"]

    import shutil

    shutil.copyfile(music / "02-beta.MP3", music / "broken.mp3")  # fixed: real audio now
    fixed = index_with_ray(music, uri, **RAY_TINY)
    assert fixed.added == 1 and fixed.failed == [] and fixed.skipped_failed == 1
    with open_store(uri) as store:
        assert [Path(f.path).name for f in store.failed_files()] == ["empty.ogg"]  # a file that indexed is forgotten
