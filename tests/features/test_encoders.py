"""features.py: the MGSV-EC recipe (spec section 3) and the encoders, with tiny random networks."""
from __future__ import annotations

import math

import numpy as np
import pytest
from _media_helpers import corrupt_copy, counter_video, music_like, pattern_video, tone

from mgsv_cli.errors import MgsvError, UsageError, WeightsMissingError
from mgsv_cli.features import encoders as F
from mgsv_cli.features import recipe as R
from mgsv_cli.features import weights as W

# transformers warns that a 128-bin Kaldi filterbank at 16 kHz has an all-zero filter: expected.
pytestmark = pytest.mark.filterwarnings("ignore:At least one mel filter has all zero values")

# ---------------------------------------------------------------- recipe: frames and windows


def test_frame_times_one_per_second_from_zero_at_most_fifty():
    np.testing.assert_array_equal(R.frame_times(23.9), np.arange(24))
    np.testing.assert_array_equal(R.frame_times(10.0), np.arange(11))
    np.testing.assert_array_equal(R.frame_times(75.0), np.arange(50))
    assert len(R.frame_times(0.3)) == 1


def test_window_centres_every_two_and_a_half_seconds():
    centres = R.window_centres()
    assert centres.shape == (96,)
    np.testing.assert_allclose(centres, np.arange(96) * 2.5)
    assert centres[-1] == 237.5


@pytest.mark.parametrize("centre, bounds", [(0.0, (0.0, 5.0)), (2.5, (0.0, 7.5)), (5.0, (0.0, 10.0)),
                                            (100.0, (95.0, 105.0)), (237.5, (232.5, 240.0))])
def test_window_bounds_are_clipped_to_the_240_second_canvas(centre, bounds):
    assert R.window_bounds(centre) == bounds


def test_window_valid_iff_centre_within_duration():
    assert R.window_valid(139.0).sum() == 56  # 0 .. 137.5
    assert R.window_valid(137.5)[55] and not R.window_valid(137.49)[55]
    assert R.window_valid(0.1).tolist() == [True] + [False] * 95
    assert R.window_valid(300.0).all()


def test_slice_windows_pad_with_zeros_and_cut_at_240_seconds():
    ramp = np.arange(250 * 16000, dtype=np.float32)
    windows = R.slice_windows(ramp)
    assert [len(w) for w in windows[:3]] == [80000, 120000, 160000]
    assert len(windows[95]) == 120000
    assert windows[95][0] == 232.5 * 16000 and windows[95][-1] == 240 * 16000 - 1
    short = R.slice_windows(np.ones(16000 * 3, dtype=np.float32))
    assert short[0][:48000].sum() == 48000 and not short[0][48000:].any()
    assert not short[10].any()


# ---------------------------------------------------------------- recipe: filterbank


def _extractor():
    from transformers import ASTFeatureExtractor

    return ASTFeatureExtractor()


def test_extractor_defaults_are_the_recipe():
    extractor = _extractor()
    assert (extractor.sampling_rate, extractor.num_mel_bins, extractor.max_length) == (16000, 128, 1024)
    assert (extractor.mean, extractor.std, extractor.do_normalize) == (R.AST_MEAN, R.AST_STD, True)
    x = np.linspace(-20, 5, 11, dtype=np.float32)
    np.testing.assert_allclose(extractor.normalize(x), (x + 4.2677393) / (4.5689974 * 2), rtol=1e-6)
    np.testing.assert_array_equal(R.normalise_fbank(x), extractor.normalize(x))


def test_batched_filterbank_equals_the_extractor_window_by_window():
    audio = music_like(31.0, seed=3)
    windows = R.slice_windows(audio)
    # 5 s, 7.5 s and 10 s windows, one straddling the track end, one past it, and windows
    # shorter than one frame and longer than 1024 frames.
    picked = [windows[k] for k in (0, 1, 2, 7, 12, 13)] + [audio[:300], audio[: 16000 * 12]]
    ours = R.fbank_windows(picked)
    assert ours.shape == (8, 1024, 128) and ours.dtype == np.float32
    extractor = _extractor()
    for k, window in enumerate(picked):
        reference = extractor(window, sampling_rate=16000, return_tensors="np")["input_values"][0]
        np.testing.assert_allclose(ours[k], reference, rtol=0, atol=1e-5)


def test_track_spectrogram_equals_windows_computed_one_by_one():
    audio = music_like(23.3, seed=4)
    spectrogram = R.TrackSpectrogram(audio)
    valid = R.window_valid(23.3)
    np.testing.assert_array_equal(spectrogram.valid, valid)
    shared = spectrogram.windows()
    assert shared.shape == (int(valid.sum()), 1024, 128)
    one_by_one = R.fbank_windows([w for w, ok in zip(R.slice_windows(audio), valid) if ok])
    np.testing.assert_allclose(shared, one_by_one, rtol=0, atol=1e-6)


def test_filterbank_settings_pinned_on_silence_and_padding():
    # A 5 s window (c = 0) has 498 Kaldi frames (25 ms every 10 ms, no partial frames);
    # silence hits the float32-epsilon floor; padding is zeros *before* normalisation.
    out = R.fbank_windows([np.zeros(80000, np.float32)])[0]
    floor = (math.log(1.192092955078125e-07) + 4.2677393) / (4.5689974 * 2)
    padding = 4.2677393 / (4.5689974 * 2)
    np.testing.assert_allclose(out[:498], floor, rtol=1e-6)
    np.testing.assert_allclose(out[498:], padding, rtol=1e-6)


def test_filterbank_mel_bins_follow_a_tone():
    t = np.arange(160000) / 16000
    low, high = (R.fbank_windows([np.sin(2 * np.pi * f * t).astype(np.float32)])[0] for f in (300, 3000))
    assert 0 < np.argmax(low[100]) < np.argmax(high[100]) < 127
    assert low[100].max() > 0.5  # far above silence


# ---------------------------------------------------------------- tiny encoders


@pytest.fixture(scope="module")
def tiny():
    return F.load_encoders("tiny", device="cpu", precision="fp32")


def test_tiny_encoders_identity(tiny):
    assert tiny.is_tiny and tiny.encoder_id == "tiny-v1"
    assert (tiny.video_dim, tiny.music_dim) == (512, 64)
    assert tiny.has_video and tiny.has_music


def test_embed_video_pads_to_fifty_with_mask(tiny, tmp_path):
    video = tiny.embed_video(pattern_video(tmp_path / "v.mp4", 3.5, size="96x64", with_audio=False))
    assert video.feats.shape == (50, 512) and video.feats.dtype == np.float32
    assert video.n_frames == 4 and video.duration == pytest.approx(3.5, abs=0.05)
    assert video.mask.tolist() == [1] * 4 + [0] * 46
    assert not video.feats[4:].any()
    assert np.abs(video.feats[:4]).min(axis=1).max() > 0
    assert not np.allclose(video.feats[0], video.feats[3])  # testsrc2 moves


def test_embed_video_equals_clip_on_full_size_frames(tiny, tmp_path):
    """Decoding straight to a 224 short side must not change what CLIP sees."""
    import torch
    from PIL import Image

    from mgsv_cli.media.ffmpeg import read_frames_1fps

    path = pattern_video(tmp_path / "v.mp4", 2.2, size="320x180", with_audio=False)
    full, _ = read_frames_1fps(path)
    preprocess = F.clip_preprocess()
    pixels = torch.stack([preprocess(Image.fromarray(f)) for f in full])
    with torch.inference_mode():
        expected = tiny._clip.encode_image(pixels).numpy()
    video = tiny.embed_video(path)
    np.testing.assert_array_equal(video.feats[: len(full)], expected)


def test_clip_preprocess_is_the_openai_recipe():
    preprocess = F.clip_preprocess()
    text = repr(preprocess)
    assert "Resize(size=224, interpolation=bicubic" in text and "CenterCrop(size=(224, 224))" in text
    assert "0.48145466, 0.4578275, 0.40821073" in text and "0.26862954, 0.26130258, 0.27577711" in text


def test_tiny_encoders_are_reproducible(tiny, tmp_path):
    again = F.load_encoders("tiny", device="cpu", precision="fp32")
    path = counter_video(tmp_path / "v.mkv", "10", 2.0, size="64x48")
    np.testing.assert_array_equal(tiny.embed_video(path).feats, again.embed_video(path).feats)
    windows = R.TrackSpectrogram(music_like(6.0)).windows()
    np.testing.assert_array_equal(tiny.embed_windows(windows), again.embed_windows(windows))


def test_pooled_output_is_mean_of_cls_and_distillation_tokens(tiny):
    import torch

    windows = torch.from_numpy(R.TrackSpectrogram(music_like(4.0)).windows())
    with torch.inference_mode():
        out = tiny._ast(input_values=windows)
    tokens = out.last_hidden_state
    assert tokens.shape == (2, 1214, 64)  # 12 x 101 patches + CLS + distillation
    torch.testing.assert_close(out.pooler_output, (tokens[:, 0] + tokens[:, 1]) / 2)
    np.testing.assert_allclose(tiny.embed_windows(windows.numpy()), out.pooler_output.numpy(), rtol=1e-6)


def test_embed_tracks_batches_across_tracks_in_order_and_survives_bad_files(tiny, tmp_path):
    good = tone(tmp_path / "a.wav", 6.0, freq=330)
    broken = corrupt_copy(pattern_video(tmp_path / "src.mp4", 1.0), tmp_path / "broken.mp3")
    array_track = ("array-track", music_like(11.0, seed=7))
    items = [good, broken, array_track, tmp_path / "missing.wav"]
    results = list(tiny.embed_tracks(items, batch_windows=3))

    assert [r.path for r in results] == [str(good), str(broken), "array-track", str(tmp_path / "missing.wav")]
    assert [r.ok for r in results] == [True, False, True, False]
    assert "broken.mp3" in results[1].error and "missing.wav" in results[3].error

    for result, duration in ((results[0], 6.0), (results[2], 11.0)):
        assert result.duration == pytest.approx(duration, abs=0.01)
        assert result.feats.shape == (96, 64) and result.feats.dtype == np.float32
        np.testing.assert_array_equal(result.mask, R.window_valid(result.duration).astype(np.uint8))
        assert not result.feats[result.mask == 0].any()
        assert np.abs(result.feats[result.mask == 1]).sum(axis=1).min() > 0

    # Each valid row is that window's own output, whatever it was batched with.
    alone = tiny.embed_windows(R.TrackSpectrogram(array_track[1]).windows())
    np.testing.assert_allclose(results[2].feats[:5], alone, rtol=1e-4, atol=1e-5)


def test_embed_tracks_yields_each_track_before_reading_far_ahead(tiny):
    seen = []

    def items():
        for k in range(4):
            seen.append(k)
            yield (f"t{k}", music_like(3.0 + k, seed=k))

    stream = tiny.embed_tracks(items(), batch_windows=2, prefetch=0)
    first = next(stream)
    assert first.path == "t0" and first.ok
    assert seen == [0]  # t0's 2 windows filled one batch: no need to read t1 first
    assert [r.path for r in stream] == ["t1", "t2", "t3"]


def test_encoders_without_a_part_refuse_it(tmp_path):
    music_only = F.load_encoders("tiny", device="cpu", parts=("music",))
    assert music_only.has_music and not music_only.has_video
    with pytest.raises(MgsvError, match="without the video encoder"):
        music_only.embed_frames(np.zeros((1, 8, 8, 3), np.uint8))


def test_loading_one_part_gives_the_same_weights(tiny):
    music_only = F.load_encoders("tiny", device="cpu", precision="fp32", parts=("music",))
    windows = R.TrackSpectrogram(music_like(3.0)).windows()
    np.testing.assert_array_equal(music_only.embed_windows(windows), tiny.embed_windows(windows))


def test_bf16_tiny_music_close_to_fp32(tiny):
    bf16 = F.load_encoders("tiny", device="cpu", precision="bf16", parts=("music",))
    windows = R.TrackSpectrogram(music_like(8.0)).windows()
    a, b = tiny.embed_windows(windows), bf16.embed_windows(windows)
    assert b.dtype == np.float32
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.98


# ---------------------------------------------------------------- loading


def test_bad_kind_and_device_are_usage_errors():
    with pytest.raises(UsageError, match="expected pretrained or tiny"):
        F.load_encoders("huge", device="cpu")
    with pytest.raises(UsageError):
        F.load_encoders("tiny", device="tpu")
    with pytest.raises(UsageError, match="unknown encoder part"):
        F.load_encoders("tiny", device="cpu", parts=("smell",))


def test_offline_pretrained_without_weights_says_what_and_how(monkeypatch, tmp_path):
    monkeypatch.delenv("MGSV_CLIP_WEIGHTS", raising=False)
    monkeypatch.delenv("MGSV_AST_WEIGHTS", raising=False)
    import huggingface_hub.constants

    # An empty hub cache, whatever this machine has cached.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(WeightsMissingError) as caught:
        F.load_encoders("pretrained", device="cpu", offline=True, weights_dir=tmp_path / "nowhere")
    message = str(caught.value)
    assert "CLIP ViT-B-32 'openai'" in message and "MIT/ast-finetuned-audioset-10-10-0.4593" in message
    assert "mgsv models download" in message and "--weights-dir" in message
    assert "\n" not in message
    assert caught.value.exit_code == 7


def test_offline_flag_from_environment(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(WeightsMissingError, match="not found offline"):
        F.load_encoders("pretrained", device="cpu", parts=("music",))


def test_local_ast_folder_is_loaded_and_checked(monkeypatch, tmp_path):
    from transformers import ASTConfig, ASTFeatureExtractor, ASTModel

    folder = tmp_path / "weights" / W.AST_WEIGHTS_SUBDIR
    config = ASTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    ASTModel(config).save_pretrained(folder)
    ASTFeatureExtractor().save_pretrained(folder)
    encoders = F.load_encoders("pretrained", device="cpu", offline=True, weights_dir=tmp_path / "weights",
                               parts=("music",), precision="fp32")
    assert encoders.music_dim == 32 and not encoders.is_tiny
    assert encoders.encoder_id == F.PRETRAINED_ENCODER_ID
    assert encoders.embed_windows(R.TrackSpectrogram(music_like(1.0)).windows()).shape == (1, 32)

    ASTFeatureExtractor(mean=-5.0).save_pretrained(folder)
    with pytest.raises(MgsvError, match="normalisation"):
        F.load_encoders("pretrained", device="cpu", offline=True, weights_dir=tmp_path / "weights",
                        parts=("music",))


def test_local_weight_lookup_order(monkeypatch, tmp_path):
    monkeypatch.delenv("MGSV_CLIP_WEIGHTS", raising=False)
    assert W.find_clip_weights(tmp_path) is None
    default = W.default_weights_dir() / W.CLIP_WEIGHTS_SUBDIR / "open_clip_model.safetensors"
    default.parent.mkdir(parents=True)
    default.write_bytes(b"x")
    assert W.find_clip_weights(tmp_path) == default
    mine = tmp_path / W.CLIP_WEIGHTS_SUBDIR / "ViT-B-32.pt"
    mine.parent.mkdir()
    mine.write_bytes(b"x")
    assert W.find_clip_weights(tmp_path) == mine
    env_file = tmp_path / "clip.bin"
    env_file.write_bytes(b"x")
    monkeypatch.setenv("MGSV_CLIP_WEIGHTS", str(env_file))
    assert W.find_clip_weights(tmp_path) == env_file


def test_skip_weight_init_only_skips_inside_the_block_and_strict_loading_restores_everything():
    import torch

    from mgsv_cli.features.encoders import skip_weight_init

    torch.manual_seed(0)
    source = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8))
    with skip_weight_init():
        built = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8))
        assert torch.nn.init.normal_ is not torch.nn.init.uniform_  # still distinct callables
    built.load_state_dict(source.state_dict(), strict=True)
    for a, b in zip(source.parameters(), built.parameters()):
        assert torch.equal(a, b)
    torch.manual_seed(1)
    fresh = torch.nn.Linear(8, 8)  # initialisation works again after the block
    torch.manual_seed(1)
    assert torch.equal(fresh.weight, torch.nn.Linear(8, 8).weight) and fresh.weight.abs().sum() > 0


def test_bf16_clip_features_agree_with_fp32(tmp_path):
    path = pattern_video(tmp_path / "v.mp4", 4.0, size="96x64", with_audio=False)
    fp32 = F.load_encoders("tiny", device="cpu", precision="fp32", parts=("video",)).embed_video(path)
    bf16 = F.load_encoders("tiny", device="cpu", precision="bf16", parts=("video",)).embed_video(path)
    a, b = fp32.feats[: fp32.n_frames], bf16.feats[: bf16.n_frames]
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cosine.min() >= 0.99, cosine
