"""mgsv doctor: checks report what is present, and the exit code follows the required ones."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mgsv_cli import doctor
from mgsv_cli.cli import main


@pytest.fixture(autouse=True)
def private_hub_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    for name in ("MGSV_CLIP_WEIGHTS", "MGSV_AST_WEIGHTS", "MGSV_INDEX", "MGSV_WEIGHTS_DIR"):
        monkeypatch.delenv(name, raising=False)


def by_name(checks):
    return {c.name: c for c in checks}


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out, captured.err


def test_required_checks_pass_here():
    import torch

    checks = by_name(doctor.run_checks())
    assert checks["ffmpeg"].ok and checks["ffmpeg"].required and "ffmpeg" in checks["ffmpeg"].detail
    assert checks["torch"].ok and torch.__version__ in checks["torch"].detail
    assert doctor.missing_required(list(checks.values())) == []
    assert not checks["music index"].ok and "mgsv index" in checks["music index"].detail
    assert not checks["trained checkpoints"].ok


def test_index_size_is_read(isolated_home):
    from mgsv_cli.index.pipeline import import_tokens
    from mgsv_cli.index.records import NewTrack
    from mgsv_cli.paths import default_index_path

    tracks = [NewTrack(f"/music/{i}.mp3", "", 60.0, np.zeros((3, 4), np.float32), np.ones(3, bool), "test-encoder")
              for i in range(3)]
    import_tokens(default_index_path(), tracks)
    check = by_name(doctor.run_checks())["music index"]
    assert check.ok and check.detail.startswith("3 track(s), 0 with beats")


def test_a_broken_settings_file_is_reported_not_raised():
    from mgsv_cli import settings

    settings.settings_path().parent.mkdir(parents=True)
    settings.settings_path().write_text("top_k = [\n")
    check = by_name(doctor.run_checks())["settings file"]
    assert not check.ok and "not valid TOML" in check.detail


def test_cli_exit_code_follows_required_checks(capsys, monkeypatch):
    code, out, _ = run_cli(["doctor", "--json"], capsys)
    report = json.loads(out)
    assert code == 0 and report["ok"] is True
    assert {"ffmpeg", "torch", "CLIP ViT-B-32 (openai)", "music index"} <= {c["name"] for c in report["checks"]}

    def no_ffmpeg():
        return [doctor.Check("ffmpeg", False, "ffmpeg is missing", required=True)]

    monkeypatch.setattr(doctor, "_ffmpeg", no_ffmpeg)
    code, out, err = run_cli(["doctor"], capsys)
    assert code == 1 and "missing or broken: ffmpeg" in err and "Traceback" not in err


def test_a_crashing_check_becomes_a_failed_line(monkeypatch):
    def broken():
        raise RuntimeError("boom")

    monkeypatch.setattr(doctor, "_memory", broken)
    checks = by_name(doctor.run_checks())
    assert not checks["memory"].ok and "boom" in checks["memory"].detail
    assert checks["ffmpeg"].ok  # the others still ran


def _index_at_default_path(n_tracks: int = 12):
    """An index of ``n_tracks`` made-up tracks where doctor looks (big enough to need overflow pages)."""
    from mgsv_cli.index.pipeline import import_tokens
    from mgsv_cli.index.records import NewTrack
    from mgsv_cli.paths import default_index_path

    rng = np.random.default_rng(0)
    tracks = [NewTrack(f"/music/{i}.mp3", "", 60.0, rng.standard_normal((96, 64)).astype(np.float32),
                       np.ones(96, bool), "test-encoder") for i in range(n_tracks)]
    import_tokens(default_index_path(), tracks)
    return default_index_path()


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _break_an_overflow_page(path):
    """Damage that counting tracks does not see, and SQLite's quick_check does."""
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        page = conn.execute("SELECT pageno FROM dbstat WHERE pagetype = 'overflow' LIMIT 1").fetchone()[0]
    except sqlite3.OperationalError:
        pytest.skip("this SQLite has no dbstat table to find a page with")
    finally:
        conn.close()
    data = bytearray(path.read_bytes())
    data[(page - 1) * page_size:(page - 1) * page_size + 4] = b"\xff\xff\xff\xf0"
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _break_an_overflow_page], ids=["truncated", "overflow-page"])
def test_a_damaged_index_fails_the_doctor_and_names_the_fix(capsys, damage):
    index = _index_at_default_path()
    damage(index)
    before = index.read_bytes()

    code, out, err = run_cli(["doctor", "--json"], capsys)
    report = json.loads(out)
    check = by_name(doctor.Check(**c) for c in report["checks"])["music index"]
    assert code == 1 and report["ok"] is False and err == ""
    assert not check.ok and check.required
    assert "is damaged" in check.detail and "`mgsv index MUSIC_DIR --force` moves it aside" in check.detail

    code, out, err = run_cli(["doctor"], capsys)
    assert code == 1 and "missing or broken: music index" in err and "Traceback" not in err
    assert index.read_bytes() == before  # doctor only looks


def test_failed_files_are_counted_by_the_doctor():
    import sqlite3

    index = _index_at_default_path(3)
    conn = sqlite3.connect(index)
    conn.execute("INSERT INTO failed(path, size, mtime_ns, reason, failed_at) "
                 "VALUES ('/music/x.mp3', 1, 1, 'bad', 'now')")
    conn.commit()
    conn.close()
    check = by_name(doctor.run_checks())["music index"]
    assert check.ok and check.detail.startswith("3 track(s)")
    assert "1 file(s) could not be indexed (`mgsv index --failed` lists them)" in check.detail
