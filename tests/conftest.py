"""Shared test setup: every test gets its own MGSV_HOME so nothing touches the user's folders.

tests/ mirrors the packages (tests/media, tests/features, ...); the helpers shared by
all of them (``_media_helpers``, ``_library_helpers``, ...) live here, importable from
every sub-folder.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

# Tests must never reach a model hub; the real loaders still run and fail cleanly offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    home = tmp_path / "mgsv_home"
    monkeypatch.setenv("MGSV_HOME", str(home))
    return home
