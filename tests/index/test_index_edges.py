"""`mgsv index` at the edges a new user hits: a damaged index, files that keep failing,
a read-only or full disk, broken symbolic links, tracks longer than the model's window.

Everything runs through the real CLI in-process (``cli.main``) on generated media with
the tiny encoders; OS failures are injected at the OS boundary (``open``, ``Path.mkdir``,
``sqlite3``), and where this machine lets a test mount a tmpfs, met for real.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from mgsv_cli import paths
from mgsv_cli.errors import IndexDatabaseError, StorageError, UsageError
from mgsv_cli.index import locking, sqlite_db
from mgsv_cli.index.sqlite_store import SqliteTrackStore

pytest.register_assert_rewrite("_library_helpers")

from _library_helpers import BAD_FILES, db_meta, db_rows, integrity, run_cli  # noqa: E402
from _media_helpers import mounted_tmpfs  # noqa: E402

pytest_plugins = ["_library_helpers"]

REPO = Path(__file__).resolve().parents[2]
DAMAGED = re.compile(r"^error: the music index .+ is damaged \(.+\): `mgsv index MUSIC_DIR --force.*` moves it "
                     r"aside and rebuilds it$")


# ---------------------------------------------------------------- helpers


def health_of(index):
    """What `mgsv doctor` reads of an index: counts and SQLite's own check."""
    with SqliteTrackStore.open(index) as opened:
        return opened.health()


@pytest.fixture
def counting(monkeypatch, tiny_encoders):
    """The CLI's encoder loading routed to the session's tiny encoders; returns the list of loads."""
    import mgsv_cli.features.encoders as features

    loads: list = []

    def load(*args, **kwargs):
        assert kwargs.get("kind") == "tiny"
        loads.append(tiny_encoders)
        return tiny_encoders

    monkeypatch.setattr(features, "load_encoders", load)
    return loads


def index_cli(capsys, music, index, *extra):
    return run_cli(capsys, "index", music, "--index", index, "--encoders", "tiny", "--device", "cpu", "--no-beats",
                   *extra)


def one_line_error(result, code: int) -> str:
    """The single stderr line of a failed command (asserting there is exactly one, no traceback)."""
    assert result.code == code, (result.code, result.out, result.err)
    assert "Traceback" not in result.err and "internal error" not in result.err
    lines = result.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    return lines[0]


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder`` (links as links): content hash and mtime, to prove nothing changed."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            found[str(path.relative_to(folder))] = ("link:" + os.readlink(path), path.lstat().st_mtime_ns)
        elif path.is_file():
            found[str(path.relative_to(folder))] = (hashlib.sha256(path.read_bytes()).hexdigest(),
                                                     path.stat().st_mtime_ns)
    return found


def failed_rows(index: Path) -> dict[str, dict]:
    conn = sqlite3.connect(index)
    conn.row_factory = sqlite3.Row
    try:
        return {Path(r["path"]).name: dict(r) for r in conn.execute("SELECT * FROM failed")}
    finally:
        conn.close()


def has_failed_table(index: Path) -> bool:
    conn = sqlite3.connect(f"file:{index}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'failed'").fetchone() is not None
    finally:
        conn.close()


def truncate_half(index: Path) -> bytes:
    """Cut the file in half, as a full disk or a crashed copy leaves it; returns the damaged bytes."""
    data = index.read_bytes()[: index.stat().st_size // 2]
    index.write_bytes(data)
    return data


def damage_an_overflow_page(index: Path) -> bytes:
    """Break the page chain of one stored token blob: ordinary reads of the track list go on
    working (they never follow that chain), SQLite's quick_check finds it."""
    conn = sqlite3.connect(index)
    try:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        row = conn.execute("SELECT pageno FROM dbstat WHERE pagetype = 'overflow' ORDER BY pageno LIMIT 1").fetchone()
    except sqlite3.OperationalError:
        pytest.skip("this SQLite has no dbstat table to find a page with")
    finally:
        conn.close()
    data = bytearray(index.read_bytes())
    offset = (row[0] - 1) * page_size
    data[offset:offset + 4] = b"\xff\xff\xff\xf0"  # "next overflow page": far past the end of the file
    index.write_bytes(bytes(data))
    return bytes(data)


# ---------------------------------------------------------------- 1. a damaged index


def test_every_command_names_the_fix_for_a_damaged_index_and_leaves_it_alone(capsys, indexed_music, counting):
    music, index = indexed_music
    music_before = snapshot(music)
    damaged = truncate_half(index)

    for extra in ([], ["--prune"], ["--retry-failed"]):
        line = one_line_error(index_cli(capsys, music, index, *extra), IndexDatabaseError.exit_code)
        assert DAMAGED.match(line), line
        assert f"`mgsv index MUSIC_DIR --force --index {index}`" in line  # runs as printed
    line = one_line_error(run_cli(capsys, "index", "--failed", "--index", index), IndexDatabaseError.exit_code)
    assert DAMAGED.match(line), line
    with pytest.raises(IndexDatabaseError, match="is damaged .* --force"):
        SqliteTrackStore.open(index)  # what suggest and render open

    assert index.read_bytes() == damaged and not list(index.parent.glob("*.corrupt-*"))
    assert snapshot(music) == music_before and counting == []


def test_the_default_index_names_the_bare_command(capsys, indexed_music):
    _, index = indexed_music
    default = paths.default_index_path()
    default.parent.mkdir(parents=True)
    shutil.copy2(index, default)
    truncate_half(default)
    line = one_line_error(run_cli(capsys, "index", "--failed"), IndexDatabaseError.exit_code)
    assert line.endswith("`mgsv index MUSIC_DIR --force` moves it aside and rebuilds it"), line


def test_force_moves_a_damaged_index_aside_with_its_wal_and_rebuilds(capsys, indexed_music, counting):
    music, index = indexed_music
    music_before = snapshot(music)
    damaged = truncate_half(index)
    wal, shm = Path(f"{index}-wal"), Path(f"{index}-shm")
    wal.write_bytes(b"")  # what a writer killed mid-run leaves beside the file
    shm.write_bytes(b"\0" * 32768)  # (SQLite rewrites this one as it reads: a cache, not data)

    result = index_cli(capsys, music, index, "--force")
    assert result.code == 0, result.err
    assert "the damaged index was moved aside to" in result.out and "3 added" in result.out
    [aside] = [p for p in index.parent.iterdir() if re.fullmatch(r"index\.sqlite\.corrupt-\d{8}T\d{6}Z", p.name)]
    assert str(aside) in result.out
    assert aside.read_bytes() == damaged  # kept as it was, for whoever wants to look
    assert Path(f"{aside}-wal").read_bytes() == b"" and Path(f"{aside}-shm").exists()
    assert integrity(index) == "ok" and len(db_rows(index)) == 3
    assert snapshot(music) == music_before

    again = index_cli(capsys, music, index)  # the rebuilt index is an ordinary one
    assert again.code == 0 and "3 unchanged" in again.out


def test_force_finds_damage_that_ordinary_reads_pass_over(capsys, indexed_music, counting):
    music, index = indexed_music
    damaged = damage_an_overflow_page(index)
    health = health_of(index)
    assert health.n_tracks == 3 and health.damage and "integrity check" in health.damage

    result = index_cli(capsys, music, index, "--force")
    assert result.code == 0, result.err
    [aside] = [p for p in index.parent.glob("index.sqlite.corrupt-*") if not p.name.endswith(("-wal", "-shm"))]
    assert aside.read_bytes() == damaged
    assert integrity(index) == "ok" and health_of(index).damage is None


def test_a_file_that_is_not_a_database_is_never_moved(capsys, good_music_dir, tmp_path, counting):
    notes = tmp_path / "notes.sqlite"
    notes.write_text("my notes, not an index " * 200)
    line = one_line_error(index_cli(capsys, good_music_dir, notes, "--force"), IndexDatabaseError.exit_code)
    assert "not an mgsv music index" in line and "not touching it" in line
    assert notes.read_text() == "my notes, not an index " * 200 and not list(tmp_path.glob("*.corrupt-*"))


# ---------------------------------------------------------------- 2. files that keep failing


def test_unchanged_failed_files_are_skipped_on_rerun_and_listed(capsys, music_dir, tmp_path, counting):
    index = tmp_path / "index.sqlite"
    first = index_cli(capsys, music_dir, index)
    assert first.code == 1 and "3 added" in first.out and "3 failed" in first.out
    rows = failed_rows(index)
    assert sorted(rows) == sorted(BAD_FILES)
    for name, row in rows.items():
        stat = (music_dir / name).stat()
        assert (row["size"], row["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns) and row["reason"]
    assert rows["empty.ogg"]["reason"] == "empty file (0 bytes)"
    loads = len(counting)

    again = index_cli(capsys, music_dir, index)
    assert again.code == 0, again.err
    assert "0 added, 0 updated, 3 unchanged, 0 pruned, 0 failed" in again.out
    assert (f"3 file(s) that failed before are unchanged: skipped (`mgsv index --failed --index {index}` lists them, "
            "`--retry-failed` tries them again)") in again.out
    assert again.err == "" and len(counting) == loads  # not even probed again

    listed = run_cli(capsys, "index", "--failed", "--index", index)
    assert listed.code == 0 and listed.err == ""
    for name in BAD_FILES:
        assert str((music_dir / name).resolve()) in listed.out
    assert "empty file (0 bytes)" in listed.out
    as_json = run_cli(capsys, "index", "--failed", "--index", index, "--json")
    report = json.loads(as_json.out)
    assert report["index"] == str(index)
    assert sorted(Path(f["path"]).name for f in report["failed"]) == sorted(BAD_FILES)
    assert all(f["exists"] and f["reason"] and f["size"] is not None for f in report["failed"])
    (music_dir / "sub").mkdir(exist_ok=True)
    under = run_cli(capsys, "index", "--failed", "--index", index, music_dir / "sub")
    assert under.code == 0 and "no failed files under" in under.out

    retried = index_cli(capsys, music_dir, index, "--retry-failed")
    assert retried.code == 1 and "3 failed" in retried.out
    assert all(name in retried.err for name in BAD_FILES)


def test_a_failed_file_that_changes_is_retried_and_leaves_the_table(capsys, music_dir, tmp_path, media_src,
                                                                    counting):
    index = tmp_path / "index.sqlite"
    assert index_cli(capsys, music_dir, index).code == 1

    shutil.copyfile(media_src / "spare.flac", music_dir / "broken.mp3")  # fixed: real audio now
    fixed = index_cli(capsys, music_dir, index)
    assert fixed.code == 0, fixed.err
    assert "1 added" in fixed.out and "2 file(s) that failed before are unchanged" in fixed.out
    assert sorted(failed_rows(index)) == ["empty.ogg", "notes-not-audio.wav"]
    assert "broken.mp3" in {Path(r["path"]).name for r in db_rows(index)}

    (music_dir / "notes-not-audio.wav").unlink()
    kept = index_cli(capsys, music_dir, index)
    assert kept.code == 0 and "notes-not-audio.wav" in failed_rows(index)  # only --prune forgets
    listed = run_cli(capsys, "index", "--failed", "--index", index)
    assert "notes-not-audio.wav" in listed.out and "gone: `--prune` forgets it" in listed.out
    pruned = index_cli(capsys, music_dir, index, "--prune")
    assert pruned.code == 0 and "1 failed file(s) no longer exist: forgotten" in pruned.out
    assert sorted(failed_rows(index)) == ["empty.ogg"]

    (music_dir / "empty.ogg").write_bytes(b"still not audio, but no longer empty")
    changed = index_cli(capsys, music_dir, index)
    assert changed.code == 1 and "empty.ogg" in changed.err  # changed: tried again by itself
    assert failed_rows(index)["empty.ogg"]["reason"] != "empty file (0 bytes)"


def test_an_index_written_by_0_1_gains_the_failed_table_on_its_next_write(capsys, tmp_path, counting):
    old = tmp_path / "index.sqlite"
    shutil.copy2(REPO / "tests" / "fixtures" / "v0_1" / "index.sqlite", old)
    listed = run_cli(capsys, "index", "--failed", "--index", old)
    assert listed.code == 0 and "no failed files" in listed.out
    assert not has_failed_table(old)  # reading never writes

    music = tmp_path / "music"
    music.mkdir()
    (music / "broken.mp3").write_bytes(b"not audio" * 100)
    first = index_cli(capsys, music, old)
    assert first.code == 1 and "1 failed" in first.out
    assert has_failed_table(old) and list(failed_rows(old)) == ["broken.mp3"]
    assert db_meta(old)["schema_version"] == "1"
    with SqliteTrackStore.open(old) as opened:
        assert len(opened.tracks()) == 4 and opened.integrity_check() == "ok"
    assert index_cli(capsys, music, old).code == 0


def test_index_arguments_that_do_not_go_together(capsys, good_music_dir, tmp_path):
    line = one_line_error(run_cli(capsys, "index"), UsageError.exit_code)
    assert "missing MUSIC_DIR" in line and "mgsv index --failed" in line
    line = one_line_error(run_cli(capsys, "index", good_music_dir, "--json"), UsageError.exit_code)
    assert "--json goes with --failed" in line
    line = one_line_error(run_cli(capsys, "index", "--failed", "--force", "--prune"), UsageError.exit_code)
    assert "--force, --prune" in line
    line = one_line_error(run_cli(capsys, "index", "--failed", "--index", tmp_path / "none.sqlite"),
                          IndexDatabaseError.exit_code)
    assert "no music index" in line and not (tmp_path / "none.sqlite").exists()


# ---------------------------------------------------------------- 3. read-only, full, and other OS failures


STORAGE_CAUSES = [
    (errno.EROFS, "the file system is read-only"),
    (errno.ENOSPC, "no space left on device"),
    (errno.EDQUOT, "disk quota exceeded"),
    (errno.EIO, "input/output error"),
    (errno.ENAMETOOLONG, "file name too long"),
    (errno.EACCES, "permission denied"),
]


@pytest.mark.parametrize("code, cause", STORAGE_CAUSES, ids=[errno.errorcode[c] for c, _ in STORAGE_CAUSES])
def test_a_lock_file_that_cannot_be_created_is_a_storage_error(capsys, indexed_music, monkeypatch, counting,
                                                              code, cause):
    music, index = indexed_music
    before, music_before = index.read_bytes(), snapshot(music)
    real_open = open

    def refusing_open(file, *args, **kwargs):
        if str(file).endswith(".lock"):
            raise OSError(code, os.strerror(code), str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(locking, "open", refusing_open, raising=False)  # the lock module's `open` only
    line = one_line_error(index_cli(capsys, music, index), StorageError.exit_code)
    assert line.startswith(f"error: cannot create the lock file {index}.lock: {cause}"), line
    assert index.read_bytes() == before and snapshot(music) == music_before


def test_a_folder_that_cannot_be_created_is_a_storage_error(capsys, good_music_dir, tmp_path, monkeypatch):
    def read_only_mkdir(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only_mkdir)
    index = tmp_path / "new" / "index.sqlite"
    line = one_line_error(index_cli(capsys, good_music_dir, index), StorageError.exit_code)
    assert line == f"error: cannot create the folder {index.parent}: the file system is read-only"


def test_sqlite_that_cannot_open_the_file_is_a_storage_error(capsys, indexed_music, monkeypatch, counting):
    music, index = indexed_music
    before = index.read_bytes()

    def refusing_connect(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(sqlite_db.sqlite3, "connect", refusing_connect)
    line = one_line_error(index_cli(capsys, music, index), StorageError.exit_code)
    assert line == f"error: cannot open the music index {index}: the file system is read-only"
    assert index.read_bytes() == before


def test_a_real_name_too_long_is_a_storage_error(capsys, good_music_dir, tmp_path):
    index = tmp_path / ("x" * 300 + ".sqlite")
    line = one_line_error(index_cli(capsys, good_music_dir, index), StorageError.exit_code)
    assert line.endswith(": file name too long")


class _FailingWrites:
    """A connection whose track writes fail the way SQLite fails them on a bad disk."""

    def __init__(self, conn, message: str):
        self._conn, self._message = conn, message

    def execute(self, sql, *args):
        if sql.lstrip().startswith("INSERT INTO tracks"):
            raise sqlite3.OperationalError(self._message)
        return self._conn.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._conn, name)


@pytest.mark.parametrize("message, cause", [
    ("database or disk is full", "no space left on device"),
    ("disk I/O error", "input/output error"),
    ("attempt to write a readonly database", "attempt to write a readonly database"),
])
def test_sqlite_write_failures_are_storage_errors_and_keep_the_index(capsys, indexed_music, media_src, monkeypatch,
                                                                    counting, message, cause):
    music, index = indexed_music
    shutil.copy2(media_src / "spare.flac", music / "new.flac")  # one track to write
    rows, music_before = db_rows(index), snapshot(music)
    real_connect = sqlite_db.connect
    monkeypatch.setattr(sqlite_db, "connect", lambda path, *, readonly: real_connect(path, readonly=readonly)
                        if readonly else _FailingWrites(real_connect(path, readonly=False), message))

    line = one_line_error(index_cli(capsys, music, index), StorageError.exit_code)
    assert line.startswith(f"error: cannot write the music index {index}: {cause}"), line
    monkeypatch.undo()
    assert integrity(index) == "ok" and db_rows(index) == rows and snapshot(music) == music_before


def test_an_index_on_a_read_only_mount_is_read_but_never_written(capsys, indexed_music, media_src, tmp_path,
                                                                 counting):
    music, index = indexed_music
    with mounted_tmpfs(tmp_path / "mnt", "size=4m") as mnt:
        mounted = mnt / "index.sqlite"
        shutil.copy2(index, mounted)
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        shutil.copy2(media_src / "spare.flac", music / "new.flac")
        before = mounted.read_bytes()

        line = one_line_error(index_cli(capsys, music, mounted), StorageError.exit_code)
        assert line == f"error: cannot create the lock file {mounted}.lock: the file system is read-only"
        listed = run_cli(capsys, "index", "--failed", "--index", mounted)  # readers still work
        assert listed.code == 0 and "no failed files" in listed.out
        with SqliteTrackStore.open(mounted) as opened:
            assert len(opened.tracks()) == 3
        assert mounted.read_bytes() == before and sorted(p.name for p in mnt.iterdir()) == ["index.sqlite"]


def test_a_disk_that_fills_up_mid_run_keeps_the_index(capsys, indexed_music, media_src, tmp_path, monkeypatch,
                                                      counting):
    music, index = indexed_music
    with mounted_tmpfs(tmp_path / "mnt", "size=2m") as mnt:
        mounted = mnt / "index.sqlite"
        shutil.copy2(index, mounted)
        shutil.copy2(media_src / "spare.flac", music / "new.flac")
        rows = db_rows(mounted)
        real_open = sqlite_db.open_for_writing

        def open_then_fill(path):
            opened = real_open(path)
            with contextlib.suppress(OSError), open(mnt / "filler", "wb") as filler:
                while True:  # another program takes the last free block
                    filler.write(b"\0" * 65536)
                    filler.flush()
            return opened

        monkeypatch.setattr(sqlite_db, "open_for_writing", open_then_fill)
        line = one_line_error(index_cli(capsys, music, mounted), StorageError.exit_code)
        assert line.startswith(f"error: cannot write the music index {mounted}: no space left on device"), line
        (mnt / "filler").unlink()
        assert integrity(mounted) == "ok" and db_rows(mounted) == rows


# ---------------------------------------------------------------- 4. broken symbolic links


def test_broken_links_are_reported_and_remembered_by_their_library_path(capsys, good_music_dir, tmp_path,
                                                                       media_src, counting):
    music = good_music_dir.resolve()
    target = tmp_path / "elsewhere" / "the-target-name.mp3"
    (music / "dead.mp3").symlink_to(target)
    (music / "loop-a.mp3").symlink_to("loop-b.mp3")
    (music / "loop-b.mp3").symlink_to("loop-a.mp3")
    index = tmp_path / "index.sqlite"

    result = index_cli(capsys, music, index)
    assert result.code == 1 and "3 added" in result.out and "3 failed" in result.out
    assert f"✗ {music / 'dead.mp3'}: broken symbolic link: its target {target} does not exist" in result.err
    assert f"✗ {music / 'loop-a.mp3'}: symbolic link loop" in result.err
    assert f"✗ {target}" not in result.err
    assert {r["path"] for r in failed_rows(index).values()} == \
        {str(music / n) for n in ("dead.mp3", "loop-a.mp3", "loop-b.mp3")}
    assert index_cli(capsys, music, index).code == 0  # the same broken links: skipped

    target.parent.mkdir()
    shutil.copy2(media_src / "spare.flac", target)  # the link works again
    mended = index_cli(capsys, music, index)
    assert mended.code == 0 and "1 added" in mended.out
    assert str(target) in {r["path"] for r in db_rows(index)}  # a working link is keyed by its target
    assert sorted(failed_rows(index)) == ["loop-a.mp3", "loop-b.mp3"]


# ---------------------------------------------------------------- 5. tracks longer than the window


def test_tracks_longer_than_the_window_are_counted_in_the_summary(capsys, tmp_path, media_src, tiny_encoders):
    from mgsv_cli.media.ffmpeg import run_ffmpeg

    music = tmp_path / "music"
    music.mkdir()
    shutil.copy2(media_src / "spare.flac", music / "short.flac")
    long_track = music / "long.wav"  # 250 s of 8-bit 8 kHz silence: 2 MB, written and decoded at once
    run_ffmpeg(["-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", "250", "-c:a", "pcm_u8", str(long_track)],
               "writing a long test track")
    index = tmp_path / "index.sqlite"

    result = run_cli(capsys, "index", music, "--index", index, "--encoders", "tiny", "--device", "cpu", "--no-beats",
                     "--batch-windows", "96")
    assert result.code == 0, result.err
    assert ("1 track(s) longer than 240 s: embedded from their first 4 minutes, the model's window "
            "(cuts stay inside it)") in result.out
    durations = {Path(r["path"]).name: r["duration"] for r in db_rows(index)}
    assert durations["long.wav"] == pytest.approx(250.0, abs=0.5)  # the true length is kept

    again = run_cli(capsys, "index", music, "--index", index, "--encoders", "tiny", "--no-beats")
    assert again.code == 0 and "longer than" not in again.out  # only what this run embedded

    row = next(line for line in (REPO / "README.md").read_text().splitlines() if line.startswith("| `mgsv index"))
    assert "240 s" in row
