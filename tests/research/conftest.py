"""Shared by the research tests: one small MGSV-EC-shaped dataset per module."""
from __future__ import annotations

import pytest
from _datagen import make_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("mgsv-ec"), n_tracks=12, n_train=96, n_val=24, n_test=24, seed=3)
