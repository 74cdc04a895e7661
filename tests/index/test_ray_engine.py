"""`mgsv index --engine ray`: Ray Data (a local Ray of 2 CPUs) into a Lance store, with tiny encoders.

One Ray instance serves the whole module (starting one costs seconds). The store is
compared with the SQLite index `mgsv index` builds from the same folder: the same tracks
and tokens (by content hash: the two backends number tracks differently) and the same
suggestions; a killed AST actor or an interrupted driver loses and duplicates nothing.
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
from mgsv_cli.index.ray_engine import AstEmbedder, index_with_ray, list_audio  # noqa: E402
from mgsv_cli.index.store import IndexProgress  # noqa: E402

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


def tracks_by_hash(uri: str) -> dict[str, tuple]:
    """content hash -> (record, tokens float32 [96, D], mask bool [96]) of every stored track."""
    store = open_store(uri)
    records = store.tracks()
    tokens, mask = store.tokens_for([r.track_id for r in records])
    assert len({r.content_hash for r in records}) == len(records)  # each content once
    return {r.content_hash: (r, tokens[k], mask[k]) for k, r in enumerate(records)}


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

    a, b = tracks_by_hash(str(sqlite)), tracks_by_hash(lance)
    assert a.keys() == b.keys() and len(b) == len(TRACKS)
    for digest, (rec_a, tok_a, mask_a) in a.items():
        rec_b, tok_b, mask_b = b[digest]
        assert (rec_a.location, rec_a.tags) == (rec_b.location, rec_b.tags)
        assert rec_a.duration == pytest.approx(rec_b.duration)
        np.testing.assert_array_equal(mask_a, mask_b)
        # The same windows through the same network; only how windows share a batch differs.
        np.testing.assert_allclose(tok_a[mask_a], tok_b[mask_b], rtol=2e-3, atol=2e-3)
    clip = media_src / "clips" / "clip0.mp4"
    from_sqlite, from_lance = suggestions(capsys, clip, sqlite), suggestions(capsys, clip, lance)
    assert [s["track"] for s in from_lance] == [s["track"] for s in from_sqlite]
    for x, y in zip(from_lance, from_sqlite):
        assert x["score"] == pytest.approx(y["score"], abs=5e-3)

    again = run_cli(capsys, "index", music_dir, "--engine", "ray", "--store", lance, *TINY)
    assert again.code == 1 and "0 added" in again.out and f"{len(TRACKS)} unchanged" in again.out
    assert tracks_by_hash(lance).keys() == a.keys()
    # The local engine writes the same store layout (`--engine local --store`).
    other = str(tmp_path / "local.lance")
    result = run_cli(capsys, "index", music_dir, "--store", other, *TINY)
    assert result.code == 1 and f"{len(TRACKS)} added" in result.out, result.err
    assert tracks_by_hash(other).keys() == a.keys()


def test_an_interrupted_run_resumes_and_a_killed_actor_loses_and_duplicates_nothing(local_ray, good_music_dir,
                                                                                     tmp_path):
    class StopOnSecond(IndexProgress):
        """Ctrl-C in the driver while the second file comes back (the first is committed)."""

        def __init__(self):
            self.done = 0

        def advance(self, name, amount=1.0, detail=""):
            self.done += 1
            if self.done == 2:
                raise KeyboardInterrupt

    source = "file://" + str(good_music_dir.resolve())  # the object-store path: listed and read through pyarrow
    assert len(list_audio(source)) == len(TRACKS)
    uri = str(tmp_path / "catalog.lance")
    options = dict(encoder_kind="tiny", device="cpu", detect_beats=False, tracks_per_batch=1, commit_every=1)
    with pytest.raises(KeyboardInterrupt) as caught:
        index_with_ray(source, uri, progress=StopOnSecond(), **options)
    kept = caught.value.report.n_tracks
    assert 1 <= kept < len(TRACKS) and caught.value.report.interrupted
    assert len(tracks_by_hash(uri)) == kept

    marker = tmp_path / "killed-once"
    stored = {r.location for r, _, _ in tracks_by_hash(uri).values()}
    victim = next(loc for loc in list_audio(source) if loc not in stored)

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
    by_hash = tracks_by_hash(uri)  # each content exactly once
    assert report.n_tracks == len(by_hash) == len(TRACKS)
    assert sorted(Path(r.location).name for r, _, _ in by_hash.values()) == sorted(Path(t[0]).name for t in TRACKS)
    assert all(r.location.startswith("file://") for r, _, _ in by_hash.values())


def test_cli_mistakes_are_one_line_errors(capsys, tmp_path, good_music_dir):
    lance = str(tmp_path / "catalog.lance")
    cases = [
        (("--engine", "ray"), "--store"),
        (("--engine", "ray", "--store", lance, "--ray-address", "127.0.0.1:1"), "no Ray cluster answers"),
        (("--engine", "ray", "--store", lance, "--ray-address", "not-an-address"), "HOST:PORT"),
        (("--engine", "ray", "--store", tmp_path / "index.sqlite"), "Lance track store"),
        (("--engine", "spark", "--store", lance), "expected local or ray"),
        (("--engine", "ray", "--store", lance, "--prune"), "--prune"),
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
