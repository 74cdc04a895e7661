"""Shared test setup: every test gets its own MGSV_HOME so nothing touches the user's folders."""
from __future__ import annotations

import os

import pytest

# Tests must never reach a model hub; the real loaders still run and fail cleanly offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    home = tmp_path / "mgsv_home"
    monkeypatch.setenv("MGSV_HOME", str(home))
    return home
