"""`mgsv suggest`, `render` and `export` with a real `mgsv serve` running (a subprocess on
127.0.0.1 and a free port): they find it through the state file, hand it the work, print
exactly what they print in-process, and ignore a server that is gone or runs other options."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _library_helpers import json_close, run_cli
from _serve_helpers import REPO, start_server

from mgsv_cli.serve import state


@pytest.fixture
def server_home(live_server, monkeypatch):
    """This test runs the CLI in the live server's MGSV_HOME, so it finds the server."""
    monkeypatch.setenv("MGSV_HOME", str(live_server.home))
    return live_server


@contextlib.contextmanager
def refusing_models(monkeypatch):
    """Loading the models in this process fails the test (the server must do the work)."""

    def refuse(cls, *args, **kwargs):
        raise AssertionError("the command loaded the models itself instead of using the server")

    with monkeypatch.context() as patch:
        patch.setattr("mgsv_cli.editor.suggest.Suggester.open", classmethod(refuse))
        yield


def both(capsys, monkeypatch, *args):
    """The command through the server (the models never loaded here), then with --no-server."""
    with refusing_models(monkeypatch):
        served = run_cli(capsys, *args)
    alone = run_cli(capsys, *args, "--no-server")
    return served, alone


def same_output(served: str, alone: str) -> bool:
    """The same lines, a JSON line's numbers to 1e-5: the server scores from its warm tokens, the
    command from the token cache, and float32 sums may differ in their last bits between the two
    (memory alignment, threads), which can flip the 6th decimal the JSON prints. Tables print
    scores to 3 decimals and must match as they are."""
    served_lines, alone_lines = served.splitlines(), alone.splitlines()
    if len(served_lines) != len(alone_lines):
        return False
    for a, b in zip(served_lines, alone_lines):
        if a.startswith("{"):
            if not json_close(json.loads(a), json.loads(b)):
                return False
        elif a != b:
            return False
    return True


def test_the_server_publishes_its_state_and_prints_its_url_first(live_server):
    assert live_server.url.startswith("http://127.0.0.1:") and "#token=" in live_server.url
    published = json.loads(live_server.state_file.read_text())
    assert published["pid"] == live_server.process.pid
    assert live_server.url == published["url"] and published["url"].endswith(published["token"])
    assert published["port"] == int(live_server.url.split(":")[2].split("/")[0])
    if os.name == "posix":
        assert oct(live_server.state_file.stat().st_mode & 0o777) == oct(0o600)
    from mgsv_cli.serve.client import health

    reply = health(state.ServerState.from_dict(published))
    assert reply["ok"] is True and reply["tracks"] == 3


def test_suggest_is_served_and_prints_the_same(server_home, serve_library, capsys, monkeypatch):
    args = ("suggest", serve_library.clip, "--index", serve_library.index, "--untrained", "--device", "cpu")
    for extra in (("--json", "--top", "3"), ("--top", "2", "--snap", "beat"), ("--json", "--include-short")):
        served, alone = both(capsys, monkeypatch, *args, *extra)
        assert served.code == alone.code == 0, (served.err, alone.err)
        assert same_output(served.out, alone.out) and served.err == alone.err, (served.out, alone.out)


def test_a_failure_is_the_same_message_and_exit_code(server_home, serve_library, media_src, capsys, monkeypatch):
    corrupt = media_src / "clips" / "corrupt.mp4"
    served, alone = both(capsys, monkeypatch, "suggest", corrupt, "--index", serve_library.index, "--untrained",
                         "--device", "cpu", "--json")
    assert served.code == alone.code == 5
    assert served.out == alone.out and served.err == alone.err and "error:" in served.err


def test_other_options_run_in_process(server_home, serve_library, capsys, monkeypatch, tmp_path):
    from mgsv_cli.editor import suggest

    opened = []
    real = suggest.Suggester.open.__func__

    def counting(cls, **kwargs):
        opened.append(kwargs["index_path"])
        return real(cls, **kwargs)

    monkeypatch.setattr(suggest.Suggester, "open", classmethod(counting))
    other = tmp_path / "copy.sqlite"
    shutil.copy2(serve_library.index, other)
    args = ("suggest", serve_library.clip, "--untrained", "--device", "cpu", "--json")
    assert run_cli(capsys, *args, "--index", other).code == 0
    assert [Path(p) for p in opened] == [other]  # another index: in-process
    assert run_cli(capsys, *args, "--index", serve_library.index, "--encoders", "pretrained", "--offline").code != 0
    assert len(opened) == 2  # other encoders: in-process (which says they do not fit the index)
    assert run_cli(capsys, *args, "--index", serve_library.index).code == 0
    assert len(opened) == 2  # the server's own options: served


def test_render_and_export_are_served_with_relative_paths(server_home, serve_library, capsys, monkeypatch,
                                                           tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy2(serve_library.clip, work / "clip.mp4")
    monkeypatch.chdir(work)
    with refusing_models(monkeypatch):
        made = run_cli(capsys, "suggest", "clip.mp4", "--index", serve_library.index, "--untrained", "--device", "cpu")
    assert made.code == 0, made.err
    cases = [
        ("render", "clip.mp4", "--pick", "2", "--force"),
        ("render", "clip.mp4", "--mix", "duck", "--json", "--force", "-o", "out"),
        ("render", "clip.mp4", "--track", str(serve_library.music / "01-alpha.wav"), "--start", "1", "--force",
         "-o", "sub/mine.mkv"),
        ("export", "clip.mp4", "-f", "edl", "--force", "--snap", "beat", "--index", str(serve_library.index)),
        ("export", "clip.mp4", "-f", "otio", "--json", "--force", "-o", "timelines"),
        ("render", "missing.mp4"),
        ("export", "missing.mp4"),
        ("render", "clip.mp4", "--pick", "9"),
    ]
    for case in cases:
        served = run_cli(capsys, *case)
        alone = run_cli(capsys, *case, "--no-server")
        assert (served.code, served.out, served.err) == (alone.code, alone.out, alone.err), case
    assert (work / "clip.mgsv.mp4").is_file() and (work / "out" / "clip.mgsv.mp4").is_file()
    exists = run_cli(capsys, "render", "clip.mp4", "--pick", "2")
    assert exists.code == 9 and "clip.mgsv.mp4 exists" in exists.err and str(work) not in exists.err


def test_the_client_never_imports_torch(server_home, serve_library):
    code = (
        "import sys\n"
        "from mgsv_cli import cli\n"
        "try:\n"
        f"    cli.main(['suggest', {str(serve_library.clip)!r}, '--index', {str(serve_library.index)!r},"
        " '--untrained', '--device', 'cpu', '--json'])\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "print('torch' in sys.modules, 'fastapi' in sys.modules, file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={**os.environ, "MGSV_HOME": str(server_home.home)})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ok"] is True
    assert done.stderr.strip().splitlines()[-1] == "False False"


def test_a_stale_state_file_is_ignored(serve_library, capsys, isolated_home, monkeypatch):
    from mgsv_cli.editor import suggest

    opened = []
    real = suggest.Suggester.open.__func__
    monkeypatch.setattr(suggest.Suggester, "open", classmethod(lambda cls, **k: opened.append(1) or real(cls, **k)))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    args = ("suggest", serve_library.clip, "--index", serve_library.index, "--untrained", "--device", "cpu")
    from mgsv_cli import __version__

    for pid in (int(gone.stdout), os.getpid()):  # a dead pid; a live one with nothing listening
        state.write_state(state.ServerState(pid=pid, port=1, host="127.0.0.1", connect_host="127.0.0.1",
                                            token="t", url="http://127.0.0.1:1/#token=t", version=__version__))
        t0 = time.monotonic()
        result = run_cli(capsys, *args)
        assert result.code == 0, result.err
        assert time.monotonic() - t0 < 60
    assert len(opened) == 2


def test_a_server_refusing_the_token_is_not_used(live_server, serve_library, capsys, isolated_home, monkeypatch):
    """Its 401 carries an exit code like every error answer, and a `reason`: the command works in-process
    instead of printing the server's refusal."""
    import dataclasses

    from mgsv_cli.serve import client

    published = state.ServerState.from_dict(json.loads(live_server.state_file.read_text()))
    state.write_state(dataclasses.replace(published, token="not-the-token"))
    statuses = []
    real = client._call

    def recording(*args, **kwargs):
        reply = real(*args, **kwargs)
        statuses.append(reply[0] if reply else None)
        return reply

    monkeypatch.setattr(client, "_call", recording)
    args = ("suggest", serve_library.clip, "--index", serve_library.index, "--untrained", "--device", "cpu", "--json")
    served = run_cli(capsys, *args)
    alone = run_cli(capsys, *args, "--no-server")
    assert 401 in statuses and served.code == alone.code == 0, served.err
    assert served.out == alone.out and served.err == alone.err


def test_a_second_server_of_the_same_home_refuses_to_start(server_home, serve_library):
    done = subprocess.run([sys.executable, "-m", "mgsv_cli", "serve", "--port", "0", "--index",
                           str(serve_library.index), "--untrained"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MGSV_HOME": str(server_home.home)}, cwd=REPO)
    assert done.returncode == 2 and "already running" in done.stderr and done.stdout == ""
    assert server_home.state_file.is_file()  # the running one's file is untouched


def test_the_server_stops_cleanly_and_removes_its_state(serve_library, tmp_path):
    server = start_server(tmp_path / "home", serve_library.index)
    try:
        assert server.state_file.is_file()
        assert server.stop(signal.SIGINT) == 0
        assert not server.state_file.exists()
        assert "mgsv serve stopped" in server.stderr_path.read_text()
    finally:
        server.stop(signal.SIGKILL)


def test_a_busy_port_is_a_one_line_error(serve_library, tmp_path, live_server):
    port = json.loads(live_server.state_file.read_text())["port"]
    done = subprocess.run([sys.executable, "-m", "mgsv_cli", "serve", "--port", str(port), "--index",
                           str(serve_library.index), "--untrained"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MGSV_HOME": str(tmp_path / "home")}, cwd=REPO)
    assert done.returncode == 2 and "cannot listen on 127.0.0.1" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "home" / "data" / "run" / "serve.json").exists()
