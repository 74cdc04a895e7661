"""The state file that says a server runs: where it lives, who may read it, when it is ignored."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from mgsv_cli import paths
from mgsv_cli.serve import state


def make_state(**changes) -> state.ServerState:
    values = dict(pid=os.getpid(), port=45678, host="127.0.0.1", connect_host="127.0.0.1", token="t0ken",
                  url="http://127.0.0.1:45678/#token=t0ken", version="0.1.0", instance="abc")
    values.update(changes)
    return state.ServerState(**values)


def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_state_file_lives_under_mgsv_home_and_only_its_owner_reads_it(isolated_home):
    written = state.write_state(make_state())
    assert written == isolated_home / "data" / "run" / "serve.json" == state.state_path()
    if os.name == "posix":
        assert stat.S_IMODE(written.stat().st_mode) == 0o600  # it holds the token
        assert stat.S_IMODE(written.parent.stat().st_mode) & 0o077 == 0
    assert state.read_state() == make_state()
    assert state.live_state() == make_state()


def test_only_the_server_that_wrote_it_removes_it():
    state.write_state(make_state(token="mine"))
    state.remove_state("someone-else")
    assert state.read_state() is not None
    state.remove_state("mine")
    assert state.read_state() is None
    state.remove_state("mine")  # nothing there: no error


def test_a_dead_servers_file_is_ignored_and_cleaned_up():
    state.write_state(make_state(pid=dead_pid()))
    assert state.read_state() is not None
    assert state.live_state() is None
    assert not state.state_path().exists()


@pytest.mark.parametrize("text", ["", "{not json", "[]", json.dumps({"pid": "x", "port": 1}),
                                  json.dumps({"pid": 1, "port": 0, "host": "h", "connect_host": "h", "token": "t",
                                              "url": "u", "version": "v"})])
def test_a_malformed_file_is_ignored(text):
    target = state.state_path(create_folder=True)
    target.write_text(text)
    assert state.read_state() is None and state.live_state() is None


def test_the_runtime_folder_is_used_without_mgsv_home(monkeypatch, tmp_path):
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    monkeypatch.delenv("MGSV_HOME")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    if sys.platform != "linux":
        pytest.skip("XDG folders are Linux's")
    assert state.state_dir(create=True) == runtime / "mgsv"
    assert state.write_state(make_state()) == runtime / "mgsv" / "serve.json"


def test_a_runtime_folder_others_can_open_is_not_trusted(monkeypatch, tmp_path):
    if sys.platform != "linux":
        pytest.skip("XDG folders are Linux's")
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    (runtime / "mgsv").mkdir()
    os.chmod(runtime / "mgsv", 0o777)
    monkeypatch.delenv("MGSV_HOME")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert state.state_dir(create=True) == paths.data_dir() / "run"


def test_tokens_are_long_and_fresh():
    tokens = {state.new_token() for _ in range(20)}
    assert len(tokens) == 20 and min(len(t) for t in tokens) >= 40
