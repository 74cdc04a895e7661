"""Decoding a video ahead (while models load or the previous clip encodes) changes nothing but timing."""
from __future__ import annotations

import pytest
import torch

from mgsv_cli.editor.suggest import VideoPrefetcher
from mgsv_cli.errors import MediaError
from mgsv_cli.features.encoders import decode_video
from mgsv_cli.media.synth import synth_clip


def test_prefetched_video_equals_decoding_it_now(tmp_path):
    clip = synth_clip(tmp_path / "clip.mp4", seconds=3.0, with_audio=False)
    prefetcher = VideoPrefetcher()
    try:
        prefetcher.start(clip)
        ahead = prefetcher.take(clip)
        again = prefetcher.take(clip)  # not started: decoded on the spot
    finally:
        prefetcher.close()
    now = decode_video(clip)
    assert ahead.duration == now.duration and again.duration == now.duration
    assert torch.equal(ahead.pixels, now.pixels) and ahead.pixels.shape == (4, 3, 224, 224)


def test_a_broken_video_fails_when_taken_not_when_started(tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 2048)
    prefetcher = VideoPrefetcher()
    try:
        prefetcher.start(broken)
        with pytest.raises(MediaError):
            prefetcher.take(broken)
    finally:
        prefetcher.close()
