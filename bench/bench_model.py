"""MaDe speed and memory on this machine (features precomputed, random weights).

Prints: a training step at batch 64 (fp32 and bf16), SmG inference throughput over 512
pairs, the reference-style B x B forward of 512 pairs, scoring one video against 4,000
cached tracks plus moments on the top 5, peak memory, and bf16-vs-fp32 agreement.
Targets (issue 2): step <= 1.5 s; >= 500 pairs/s; 4,000-track query < 0.1 s. Then what a
made-plus querybank (2,048 training videos) adds to encoding a track for the index (its score
offset; once per track and checkpoint). ``bench_model.py querybank`` prints only that.
"""
from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mgsv_cli.device import compute_dtype, tune_malloc_for_training  # noqa: E402
from mgsv_cli.models.losses import detection_loss, matching_loss  # noqa: E402
from mgsv_cli.models.made import MaDe  # noqa: E402
from mgsv_cli.models.variants import load_config  # noqa: E402


def fake_batch(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(n, 50, 512, generator=g)
    n_frames = torch.randint(5, 51, (n,), generator=g)
    frame_mask = torch.arange(50)[None] < n_frames[:, None]
    windows = torch.randn(n, 96, 768, generator=g)
    n_windows = torch.randint(12, 97, (n,), generator=g)
    window_mask = torch.arange(96)[None] < n_windows[:, None]
    span = torch.stack([torch.rand(n, generator=g) * 0.5 + 0.2, torch.rand(n, generator=g) * 0.15 + 0.02], 1)
    return frames, frame_mask, windows, window_mask, span


def timed(fn, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def bench_train_step(model, dtype, batch) -> float:
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
    frames, frame_mask, windows, window_mask, span = batch
    model.train()

    def step():
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            out = model(frames, frame_mask, windows, window_mask)
        loss = matching_loss(out["mean_sim"], out["xpool_sim"], model.logit_scale) + detection_loss(out["spans"], span)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    return timed(step, 3)


def inference_copy(model, dtype):
    """Inference runs with the weights themselves in ``dtype`` (no per-op autocast casts)."""
    import copy

    return copy.deepcopy(model).to(dtype).eval()


@torch.no_grad()
def smg_pairs_per_second(model, dtype, batch) -> float:
    frames, frame_mask, windows, window_mask, _ = batch
    model = inference_copy(model, dtype)

    def infer():
        model.ground_pairs(frames, frame_mask, windows, window_mask)

    return len(frames) / timed(infer, 2)


@torch.no_grad()
def full_forward_seconds(model, dtype, batch) -> float:
    frames, frame_mask, windows, window_mask, _ = batch
    model = inference_copy(model, dtype)

    def forward():
        model(frames, frame_mask, windows, window_mask)

    return timed(forward, 1)


@torch.no_grad()
def query_seconds(model, dtype, n_tracks: int = 4000, top_k: int = 5):
    """One video against n_tracks whose scoring tokens are cached; moments on the top k."""
    model = inference_copy(model, dtype)
    frames, frame_mask, windows, window_mask, _ = fake_batch(n_tracks, seed=1)
    cache = model.encode_music(windows, window_mask).for_scoring()

    def query():
        video = model.encode_video(frames[:1], frame_mask[:1])
        scores = model.score_pairs(video, cache)[:, 0]
        top = scores.topk(top_k).indices
        music = model.encode_music(windows[top], window_mask[top])
        return top, model.detect(video.repeat(top_k), music)

    return timed(query, 5), query


@torch.no_grad()
def querybank_cost(n_tracks: int = 128, bank: int = 2048) -> None:
    """Encoding tracks for search with and without made-plus's querybank offsets, per track."""
    import dataclasses

    variant = load_config("made-plus")
    model = MaDe(dataclasses.replace(variant.model, querybank_size=bank)).eval()
    model.set_querybank(torch.randn(bank, variant.model.d_model))
    _, _, windows, window_mask, _ = fake_batch(n_tracks, seed=3)
    for dtype in (torch.float32, torch.bfloat16):
        runner = inference_copy(model, dtype)
        plain = timed(lambda: runner.encode_music(windows, window_mask), 1)
        banked = timed(lambda: runner.encode_music(windows, window_mask, for_search=True), 1)
        print(f"made-plus track encoding for the index [{dtype}], querybank of {bank}: "
              f"{plain / n_tracks * 1000:.2f} ms/track plain, {banked / n_tracks * 1000:.2f} ms/track with offsets")


def main() -> None:
    if sys.argv[1:] == ["querybank"]:
        querybank_cost()
        return
    torch.manual_seed(0)
    tune_malloc_for_training()
    variant = load_config("made")
    model = MaDe(variant.model)
    fast = compute_dtype(torch.device("cpu"), "auto")
    print(f"threads={torch.get_num_threads()} auto dtype={fast}")
    print(f"params {model.parameter_counts()}")
    batch64 = fake_batch(64)
    for dtype in (torch.float32, torch.bfloat16):
        print(f"train step batch 64 [{dtype}]: {bench_train_step(model, dtype, batch64):.3f} s (target <= 1.5)")
    batch512 = fake_batch(512)
    for dtype in (torch.float32, torch.bfloat16):
        pairs_per_second = smg_pairs_per_second(model, dtype, batch512)
        print(f"SmG inference 512 pairs [{dtype}]: {pairs_per_second:.0f} pairs/s (target >= 500)")
    forward_seconds = full_forward_seconds(model, torch.bfloat16, batch512)
    print(f"B x B forward of 512 pairs [bf16]: {forward_seconds:.2f} s (reference 6.7 s)")
    for dtype in (torch.float32, torch.bfloat16):
        seconds, _ = query_seconds(model, dtype)
        print(f"1 video vs 4,000 cached tracks + top-5 moments [{dtype}]: {seconds * 1000:.1f} ms (target < 100)")
    agreement(model)
    querybank_cost()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {peak:.0f} MiB")


@torch.no_grad()
def agreement(model) -> None:
    """bf16 vs fp32 inference: same top-1 track, moments within 0.5 s."""
    frames, frame_mask, windows, window_mask, _ = fake_batch(256, seed=2)
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        copy = inference_copy(model, dtype)
        video = copy.encode_video(frames, frame_mask)
        music = copy.encode_music(windows, window_mask)
        top1 = copy.score_pairs(video, music).argmax(0)
        spans = copy.detect(video, music)
        results[dtype] = (top1, copy.spans_to_seconds(spans.float(), torch.full((256,), 240.0)))
    (top_a, se_a), (top_b, se_b) = results[torch.float32], results[torch.bfloat16]
    same = (top_a == top_b).float().mean().item() * 100
    gap = (se_a - se_b).abs().max().item()
    print(f"bf16 vs fp32 (random weights, 256 videos x 256 tracks): same top-1 {same:.1f}%, max moment gap {gap:.3f} s")


if __name__ == "__main__":
    main()
