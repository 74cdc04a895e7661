"""The two-stage search at catalog scale (issue 10): agreement with exhaustive scoring, and 1M tracks.

Sections (``--sections``; all by default):

``agreement``
    A tiny MaDe trained for a few epochs (``research.train.train``, CPU) on a planted-signal
    dataset (``research.synthetic``), then a catalog of ``--catalog`` (5,000) tracks drawn
    with the same generator (new tracks: random styles, half of them variants of another
    catalog track, so near neighbours exist) and ``--queries`` query videos of random
    catalog tracks. For each query: exhaustive top-10 (every track scored by the model)
    against two-stage top-10 (first stage ``cos(v, h0)`` keeps N, the model reranks them)
    for N in ``--rerank-sizes``: the share of queries whose top-10 *sets* are identical and
    whose ordered lists are. The catalog's derived rows live in an in-memory store (the
    stores' equality is what tests/index/test_search.py checks); N = 1,000 is also run through
    ``retrieval.search.Retriever`` itself and compared.
``million``
    ``--tracks`` (1,000,000) synthetic tracks written straight into a Lance track store in
    the layout ``lance_store`` writes (chunks of ``--chunk`` rows): tracks with no AST tokens,
    derived rows with pooled float32 [256] and keys [S_i, 256] (the ``scoring`` blob) in ``--keys`` (int8 by
    default, as ``mgsv index --store ... --keys int8`` keeps them: 15 GiB at 1M; float16: 29 GiB), S_i drawn like real
    tracks (durations ~ N(140 s, 45 s) in [15, 300] s: mean ~57 of 96 windows). Then, in a
    fresh process (so that its peak resident memory is the search's alone): the first stage's
    build time (export of the pooled matrix to a memory-mapped .npy + inverse norms), and
    ``--repeats`` queries of a ``made``-size MaDe (d 256, random weights): first stage +
    rerank of ``--rerank`` (1,000) + moments on the top 5 (the steps of ``Retriever.search``,
    timed one by one), median latency per stage, peak RSS
    (VmHWM). The moments' AST tokens are random [S_i, 768] made on the fly for the 5 winners
    (1M tracks of real tokens would be 147 GB); their Lance read (~5 x 90 KB) is left out.
    The warm queries read whatever the page cache holds (printed: the share of the store's files
    resident before and after; at 1M the store is larger than a 23 GiB machine's memory, so part
    of each query's rows come from disk); ``--cold-repeats`` more queries (``<N>_cold``) run after
    evicting the store's files from the page cache (``posix_fadvise``), every row from disk.
    The store is deleted at the end unless ``--keep``. Needs ~31 GB of disk at 1M.
``ray``
    ``bench/bench_ray_index.py`` (Ray indexing throughput against ``--engine local``) when
    that file exists; skipped otherwise.

Prints numbers as it goes and ONE JSON line at the end (``{"bench": "scale", ...}``).

    .venv/bin/python bench/bench_scale.py --sections agreement
    .venv/bin/python bench/bench_scale.py --sections million --tracks 50000
    .venv/bin/python bench/bench_scale.py --sections million --tracks 1000000 --folder /tmp/scale
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FINGERPRINT = "bench-scale"
TOP = 10


def log(message: str) -> None:
    print(message, flush=True)


def peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM), MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- an in-memory store (agreement)


class MemoryStore:
    """The part of :class:`~mgsv_cli.index.backend.TrackStore` the search reads, held in arrays:
    ids int64 [N], pooled float32 [N, d], keys float16 [N, S, d], mask bool [N, S], durations [N]."""

    uri = "memory"
    supports_vector_index = False

    def __init__(self, ids, pooled, keys, mask, durations, key_scales=None):
        self.ids, self.pooled, self.keys, self.mask, self.durations = ids, pooled, keys, mask, durations
        self.key_scales = key_scales  # float32 [N, S] when keys are int8 (records.quantize_keys)
        self._row = {int(i): k for k, i in enumerate(ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def pooled_matrix(self, fingerprint):
        return self.ids, self.pooled

    def tracks(self, ids):
        from mgsv_cli.index.records import TrackRecord

        return [TrackRecord(int(i), f"/catalog/{int(i)}", f"{int(i):032x}", float(self.durations[self._row[int(i)]]))
                for i in ids]

    def derived_for(self, fingerprint, ids):
        import numpy as np

        from mgsv_cli.index.records import DerivedRows

        rows = np.array([self._row[int(i)] for i in ids], dtype=np.int64)
        width = max(1, int(self.mask[rows].any(0).nonzero()[0].max(initial=0)) + 1)
        scales = None if self.key_scales is None else self.key_scales[rows, :width]
        return DerivedRows(self.ids[rows], self.pooled[rows], self.keys[rows, :width], self.mask[rows, :width], scales)

    def quantized(self) -> "MemoryStore":
        """The same catalog with int8 keys, as a Lance store created with ``key_encoding="int8"`` keeps them."""
        from mgsv_cli.index.records import quantize_keys

        keys, scales = quantize_keys(self.keys)
        return MemoryStore(self.ids, self.pooled, keys, self.mask, self.durations, scales)


# ---------------------------------------------------------------- agreement


def train_small_model(folder: Path, epochs: int):
    """A tiny MaDe trained on a planted-signal dataset; returns (model, dataset description)."""
    from mgsv_cli.models.checkpoint import load_model
    from mgsv_cli.models.variants import load_config, replace_train
    from mgsv_cli.research import synthetic
    from mgsv_cli.research.train import train

    data = folder / "data"
    info = synthetic.make_dataset(data, n_videos=1200, n_tracks=60, seed=0)
    variant = replace_train(load_config("tiny"), epochs=epochs)
    start = time.perf_counter()
    result = train(data, variant, out_dir=folder / "run", device="cpu")
    log(f"trained tiny MaDe: {epochs} epochs on {info.n('train')} videos in {time.perf_counter() - start:.0f} s; "
        f"val {json.dumps({k: round(v, 3) for k, v in result.best_metrics.items() if isinstance(v, float)})}")
    model, _, _ = load_model(result.run_dir, device="cpu")
    return model.eval(), info


def make_catalog(model, info, n_tracks: int, n_queries: int, seed: int = 7):
    """(MemoryStore of ``n_tracks`` new tracks' derived rows, query frames [Q, 50, 512], masks [Q, 50],
    the track each query was cut from [Q])."""
    import numpy as np
    import torch

    from mgsv_cli.research import synthetic as syn
    from mgsv_cli.retrieval.derived import derive_rows

    rng = np.random.default_rng(seed)
    codebook = rng.normal(size=(syn.N_SECTION_TYPES, syn.STYLE_DIM))
    tracks = []
    for k in range(n_tracks):
        if k and rng.random() < 0.5:  # a variant of an earlier catalog track: a near neighbour
            style = tracks[int(rng.integers(k))].style + syn.PARENT_STYLE_NOISE * rng.normal(size=syn.STYLE_DIM)
        else:
            style = rng.normal(size=syn.STYLE_DIM)
        tracks.append(syn._make_track(rng, codebook, f"cat{k:06d}", "test", style))
    ids = np.arange(1, n_tracks + 1, dtype=np.int64)
    pooled, keys, mask = [], np.zeros((n_tracks, syn.N_WINDOWS, model.cfg.d_model), np.float16), \
        np.zeros((n_tracks, syn.N_WINDOWS), bool)
    for begin in range(0, n_tracks, 256):
        batch = [syn._track_windows(rng, t, info.projections, 0.5) for t in tracks[begin:begin + 256]]
        rows = derive_rows(model, ids[begin:begin + 256], np.stack([w for w, _ in batch]),
                           np.stack([m for _, m in batch]).astype(bool))
        pooled.append(rows.pooled)
        keys[begin:begin + len(batch), :rows.keys.shape[1]] = rows.keys
        mask[begin:begin + len(batch), :rows.mask.shape[1]] = rows.mask
    store = MemoryStore(ids, np.concatenate(pooled), keys, mask, np.array([t.duration for t in tracks]))
    targets = rng.integers(n_tracks, size=n_queries)
    frames, frame_masks = [], []
    for q, t in enumerate(targets):
        row = syn._make_row(rng, tracks[t], f"q{q}")
        f, m = syn._video_frames(rng, tracks[t], row, info.projections, 0.5, 0.3)
        frames.append(f)
        frame_masks.append(m)
    return store, torch.from_numpy(np.stack(frames)), torch.from_numpy(np.stack(frame_masks)), ids[targets]


def run_agreement(args, results: dict) -> None:
    import torch

    from mgsv_cli.retrieval.first_stage import FirstStage
    from mgsv_cli.retrieval.search import Retriever, rerank_ids

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="mgsv-bench-scale-") as tmp:
        os.environ["MGSV_HOME"] = str(Path(tmp) / "home")
        model, info = train_small_model(Path(tmp), args.epochs)
    start = time.perf_counter()
    store, frames, frame_masks, targets = make_catalog(model, info, args.catalog, args.queries)
    log(f"catalog: {args.catalog} tracks (derived rows of the trained model) and {args.queries} queries in "
        f"{time.perf_counter() - start:.0f} s")
    stage = FirstStage.build(store, FINGERPRINT, kind="exact")
    retriever = Retriever(model, store, FINGERPRINT, stage, None, 1000)  # two stages, rerank 1,000
    int8_store = store.quantized()
    sizes = sorted(args.rerank_sizes)
    int8_same_set = {n: 0 for n in sizes}  # the rerank on int8 keys against exhaustive float16 scoring
    int8_same_list = {n: 0 for n in sizes}
    same_set = {n: 0 for n in sizes}
    same_list = {n: 0 for n in sizes}
    recall_target = {n: 0 for n in sizes}
    exhaustive_hits, checked, mismatched = 0, 0, 0
    start = time.perf_counter()
    for q in range(len(frames)):
        with torch.inference_mode():
            video = model.encode_video(frames[q:q + 1], frame_masks[q:q + 1])
        full = rerank_ids(model, video, store, FINGERPRINT, store.ids)  # every track scored by the model
        score_of = dict(zip(full.track_ids.tolist(), full.scores.tolist()))
        reference = full.track_ids[:TOP].tolist()
        exhaustive_hits += int(targets[q] in reference)
        int8 = rerank_ids(model, video, int8_store, FINGERPRINT, store.ids)
        int8_score_of = dict(zip(int8.track_ids.tolist(), int8.scores.tolist()))
        first_ids, _ = stage.top(video.pooled[0].numpy(), max(sizes))
        for n in sizes:
            # The rerank scores each candidate as exhaustive scoring does (tests check it exactly).
            kept = sorted(first_ids[:n].tolist(), key=lambda i: (-score_of[i], i))[:TOP]
            same_set[n] += set(kept) == set(reference)
            same_list[n] += kept == reference
            recall_target[n] += int(targets[q] in kept)
            kept = sorted(first_ids[:n].tolist(), key=lambda i: (-int8_score_of[i], i))[:TOP]
            int8_same_set[n] += set(kept) == set(reference)
            int8_same_list[n] += kept == reference
        if 1000 in sizes and q < args.check_queries:
            real = retriever.search(video, top_k=TOP, moments=False)
            checked += 1
            kept = sorted(first_ids[:1000].tolist(), key=lambda i: (-score_of[i], i))[:TOP]
            mismatched += real.top_ids.tolist() != kept
    seconds = time.perf_counter() - start
    n_q = len(frames)
    log(f"{n_q} queries over {args.catalog} tracks ({seconds:.0f} s); exhaustive top-10 holds the query's own "
        f"track for {100 * exhaustive_hits / n_q:.1f}%")
    log(f"{'N':>6} {'same top-10 set':>16} {'same ordered':>13} {'own track in top-10':>20}"
        f" {'int8 keys: same set':>20} {'same ordered':>13}")
    for n in sizes:
        log(f"{n:>6} {100 * same_set[n] / n_q:>15.1f}% {100 * same_list[n] / n_q:>12.1f}% "
            f"{100 * recall_target[n] / n_q:>19.1f}% {100 * int8_same_set[n] / n_q:>19.1f}% "
            f"{100 * int8_same_list[n] / n_q:>12.1f}%")
    if checked:
        log(f"Retriever.search at N=1000 agrees with the computation above on {checked - mismatched} of {checked} "
            "queries")
    results["agreement"] = {
        "catalog": args.catalog, "queries": n_q, "epochs": args.epochs,
        "same_set_pct": {str(n): round(100 * same_set[n] / n_q, 2) for n in sizes},
        "same_order_pct": {str(n): round(100 * same_list[n] / n_q, 2) for n in sizes},
        "own_track_in_top10_pct": {str(n): round(100 * recall_target[n] / n_q, 2) for n in sizes},
        "int8_keys_same_set_pct": {str(n): round(100 * int8_same_set[n] / n_q, 2) for n in sizes},
        "int8_keys_same_order_pct": {str(n): round(100 * int8_same_list[n] / n_q, 2) for n in sizes},
        "exhaustive_own_track_in_top10_pct": round(100 * exhaustive_hits / n_q, 2),
        "search_checked": checked, "search_mismatched": mismatched,
    }


# ---------------------------------------------------------------- 1M tracks


def windows_of(durations):
    """Valid 2.5 s windows of tracks of ``durations`` seconds (the recipe: window j iff 2.5 j <= duration)."""
    import numpy as np

    from mgsv_cli.features import recipe

    return np.minimum(np.floor(durations / 2.5).astype(np.int64) + 1, recipe.N_MUSIC_WINDOWS)


def _binary_rows(data, lengths, row_bytes: int):
    """A large_binary array whose row k is ``lengths[k] * row_bytes`` bytes of ``data`` (in order)."""
    import numpy as np
    import pyarrow as pa

    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(np.asarray(lengths, dtype=np.int64) * row_bytes, out=offsets[1:])
    return pa.LargeBinaryArray.from_buffers(pa.large_binary(), len(lengths),
                                            [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def build_store(root: str, n: int, dim: int, chunk: int, seed: int = 0, compressed_keys: bool = False,
                key_encoding: str = "int8") -> None:
    """``n`` tracks and their derived rows for :data:`FINGERPRINT`, written with Lance in the layout of a
    store created with ``key_encoding``."""
    import lance
    import numpy as np
    import pyarrow as pa

    from mgsv_cli.index import lance_store as ls

    rng = np.random.default_rng(seed)
    # Keys are sliced from one pool of random (layer-norm-like) rows: the search's cost does
    # not depend on their values, and drawing 15e9 normals would dominate the build.
    pool = rng.standard_normal((1 << 16, dim), dtype=np.float32).astype(np.float16)
    tracks_uri, derived_uri = ls._join(root, ls.TRACKS_NAME), ls._join(root, ls.DERIVED_FOLDER, f"{FINGERPRINT}.lance")
    schema = ls._derived_schema(dim, FINGERPRINT, key_encoding)
    if compressed_keys:  # an experiment: the scoring rows with Lance's default compression (slower take())
        at = schema.get_field_index(ls.SCORING_COLUMN)
        schema = schema.set(at, schema.field(at).with_metadata({}))
    for begin in range(0, n, chunk):
        k = min(chunk, n - begin)
        hashes = [f"{i:032x}" for i in range(begin, begin + k)]
        locations = [f"/catalog/{h}.flac" for h in hashes]
        ids = pa.array([ls.track_key(loc) for loc in locations], pa.int64())
        content_keys = pa.array([ls.track_key(h) for h in hashes], pa.int64())  # what derived rows are current for
        durations = np.clip(rng.normal(140.0, 45.0, k), 15.0, 300.0).round(3)
        counts = windows_of(durations)
        tracks = pa.Table.from_arrays([
            ids, pa.array(locations), pa.array(hashes), pa.array(durations),
            pa.array(["{}"] * k), pa.array(["bench-scale"] * k), pa.array(np.zeros(k, np.int32)),
            pa.array(np.full(k, 768, np.int32)), _binary_rows(b"", np.zeros(k), 0),
            pa.array([b""] * k, pa.binary()), pa.nulls(k, pa.string()),
            pa.array(np.full(k, 5 << 20, np.int64)), pa.array(np.full(k, 10 ** 18, np.int64)), content_keys,
            pa.nulls(k, pa.string()),  # structure
        ], schema=ls._tracks_schema(key_encoding))
        lance.write_dataset(tracks, tracks_uri, mode="create" if begin == 0 else "append")
        total = int(counts.sum())
        start = int(rng.integers(0, pool.shape[0]))
        keys = np.take(pool, (start + np.arange(total)) % pool.shape[0], axis=0)
        pooled = rng.standard_normal((k, dim), dtype=np.float32)
        rows = np.split(keys, np.cumsum(counts)[:-1])  # views: track j's keys [S_j, dim]
        derived = pa.Table.from_arrays([
            ids, content_keys, pa.FixedSizeListArray.from_arrays(pa.array(pooled.reshape(-1)), dim),
            pa.array(counts.astype(np.int32)),
            ls._scoring_blobs(pooled, rows, [np.ones(len(r), bool) for r in rows], counts, key_encoding),
        ], schema=schema)
        lance.write_dataset(derived, derived_uri, mode="create" if begin == 0 else "append")
        del keys, rows, derived
        if (begin // chunk) % 10 == 0 or begin + k == n:
            log(f"  built {begin + k:,} tracks")


class RandomTokens:
    """A track store whose ``tokens_for`` makes random AST tokens [K, 96, 768] (valid windows
    as the track's duration says) instead of reading them: the 1M store holds none."""

    def __init__(self, store):
        self._store = store

    def __getattr__(self, name):
        return getattr(self._store, name)

    def __len__(self) -> int:
        return len(self._store)

    def tokens_for(self, ids):
        import numpy as np

        counts = windows_of(np.array([r.duration for r in self._store.tracks(list(ids))]))
        rng = np.random.default_rng(int(ids[0]) % (2 ** 32))
        tokens = rng.standard_normal((len(ids), 96, 768), dtype=np.float32)
        mask = np.arange(96)[None] < counts[:, None]
        tokens[~mask] = 0.0
        return tokens, mask


def reset_peak_rss() -> bool:
    """Start VmHWM again from the current resident size (Linux ``clear_refs``); False when refused."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def evict_from_page_cache(root: str) -> int:
    """Drop the store's data files from the page cache (``posix_fadvise`` DONTNEED: only these
    files, nobody else's); returns the bytes asked. The next reads come from the disk: cold."""
    total = 0
    for path in Path(root).rglob("*.lance"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            total += path.stat().st_size
    return total


def cached_share(root: str) -> float | None:
    """Share of the store's data files in the page cache (``fincore``), or None without it."""
    files = [str(p) for p in Path(root).rglob("*.lance") if p.is_file()]
    if not files or shutil.which("fincore") is None:
        return None
    out = subprocess.run(["fincore", "-b", "-n", "-o", "RES,SIZE", *files], capture_output=True, text=True).stdout
    rows = [line.split() for line in out.splitlines() if line.strip()]
    resident, size = sum(int(r[0]) for r in rows), sum(int(r[1]) for r in rows)
    return resident / max(size, 1)


def query_phase(args) -> dict:
    """Runs in a fresh process: first-stage build, ``--repeats`` queries per rerank size, peak RSS
    of the whole process and of the queries alone (VmHWM reset after the build)."""
    import gc

    import numpy as np
    import torch

    from mgsv_cli.index.backend import open_store
    from mgsv_cli.models.made import MaDe
    from mgsv_cli.models.variants import load_config
    from mgsv_cli.retrieval.first_stage import FirstStage
    from mgsv_cli.retrieval.search import Retriever, detect_moments, rerank_ids

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    model = MaDe(load_config("made").model).eval()
    store = RandomTokens(open_store(args.store_root))
    start = time.perf_counter()
    stage = FirstStage.build(store, FINGERPRINT, kind=args.first_stage)
    build_s = time.perf_counter() - start
    stage = None  # one copy at a time: the second build is what a later process pays
    gc.collect()
    again = time.perf_counter()
    stage = FirstStage.build(store, FINGERPRINT, kind=args.first_stage)
    reopen_s = time.perf_counter() - again
    gc.collect()
    build_peak = peak_rss_mb()
    reset = reset_peak_rss()
    numbers = {"tracks": len(stage), "first_stage_kind": stage.kind, "keys": store.key_encoding,
               "first_stage_dtype": "bfloat16" if stage.unit is not None else "float32",
               "build_first_stage_s": round(build_s, 2), "build_first_stage_again_s": round(reopen_s, 3),
               "queries": args.repeats, "by_rerank": {}}
    rng = torch.Generator().manual_seed(1)
    numbers["store_cached_share_before_queries"] = cached_share(args.store_root)
    runs = [(str(n), n, args.repeats, False) for n in args.rerank]
    if args.cold_repeats:
        runs.append((f"{args.rerank[0]}_cold", args.rerank[0], args.cold_repeats, True))
    for label, rerank, repeats, cold in runs:
        stages: dict[str, list[float]] = {"first_stage": [], "rerank": [], "moments": [], "total": []}
        for q in range(repeats + 1):
            frames = torch.randn(1, 50, model.cfg.video_dim, generator=rng)
            with torch.inference_mode():
                video = model.encode_video(frames, torch.arange(50)[None] < 24)
            if cold:  # every row this query reads comes from the disk
                evict_from_page_cache(args.store_root)
            # The steps of Retriever.search (a catalog: no resident keys), each timed.
            t0 = time.perf_counter()
            ids, cos = stage.top(video.pooled[0].numpy(), rerank)
            t1 = time.perf_counter()
            candidates = rerank_ids(model, video, store, FINGERPRINT, ids, cos)
            t2 = time.perf_counter()
            top_ids = candidates.track_ids[:5]
            durations = np.array([r.duration for r in store.tracks(top_ids.tolist())], dtype=np.float64)
            predicted, _ = detect_moments(model, video, store, top_ids, durations)
            t3 = time.perf_counter()
            if q == 0:  # the first query warms the id -> row map and the caches; it is checked instead
                found = Retriever(model, store, FINGERPRINT, stage, None, rerank).search(video, top_k=5)
                assert found.top_ids.tolist() == top_ids.tolist(), (found.top_ids, top_ids)
                continue
            for key, seconds in (("first_stage", t1 - t0), ("rerank", t2 - t1), ("moments", t3 - t2)):
                stages[key].append(seconds)
            stages["total"].append(t3 - t0)
        assert len(top_ids) == 5 and predicted.shape == (5, 2)
        numbers["by_rerank"][label] = {
            **{f"{k}_ms_median": round(1000 * float(np.median(v)), 1) for k, v in stages.items()},
            "total_ms_max": round(1000 * float(np.max(stages["total"])), 1), "queries": repeats}
    numbers["store_cached_share_after_queries"] = cached_share(args.store_root)
    numbers.update(peak_rss_mb=round(max(build_peak, peak_rss_mb()), 1),
                   query_peak_rss_mb=round(peak_rss_mb(), 1) if reset else None)
    return numbers


def run_million(args, results: dict) -> None:
    folder = Path(args.folder or tempfile.mkdtemp(prefix="mgsv-bench-scale-"))
    folder.mkdir(parents=True, exist_ok=True)
    root = str(folder / "catalog.lance")
    free_gb = shutil.disk_usage(folder).free / 2 ** 30
    need_gb = (args.tracks * 57 * (261 if args.keys == "int8" else 513) * 1.1 / 2 ** 30
               + args.tracks * 1100 * 2 / 2 ** 30)
    log(f"store in {folder}: {free_gb:.0f} GiB free, the build needs about {need_gb:.1f} GiB")
    if not args.reuse and need_gb > free_gb - 10:
        raise SystemExit(f"not enough free disk for {args.tracks:,} tracks ({need_gb:.0f} GiB + 10 GiB spare)")
    env = {**os.environ, "MGSV_HOME": str(folder / "home")}
    try:
        if not args.reuse:
            start = time.perf_counter()
            build_store(root, args.tracks, 256, args.chunk, compressed_keys=args.compressed_keys,
                        key_encoding=args.keys)
            build_s = time.perf_counter() - start
            log(f"wrote {args.tracks:,} tracks + derived rows in {build_s:.0f} s")
        else:
            build_s = None
            shutil.rmtree(folder / "home", ignore_errors=True)  # the first stage's export is measured again
        size_gb = sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file()) / 2 ** 30
        child = subprocess.run([sys.executable, __file__, "--query-phase", "--store-root", root, "--repeats",
                                str(args.repeats), "--rerank", *map(str, args.rerank), "--first-stage",
                                args.first_stage, "--cold-repeats", str(args.cold_repeats)],
                               env=env, capture_output=True, text=True)
        if child.returncode != 0:
            raise SystemExit(f"the query phase failed:\n{child.stderr[-3000:]}")
        numbers = json.loads(child.stdout.strip().splitlines()[-1])
        numbers.update(store_gib=round(size_gb, 1), write_store_s=None if build_s is None else round(build_s, 1))
        log(f"{numbers['tracks']:,} tracks ({size_gb:.1f} GiB store, {numbers['keys']} keys): "
            f"first stage ({numbers['first_stage_kind']}, {numbers['first_stage_dtype']}) "
            f"built in {numbers['build_first_stage_s']:.2f} s "
            f"({numbers['build_first_stage_again_s']:.3f} s when its export exists)")
        share = numbers["store_cached_share_before_queries"]
        if share is not None:
            log(f"page cache held {100 * share:.0f}% of the store's files before the queries, "
                f"{100 * numbers['store_cached_share_after_queries']:.0f}% after (the warm queries read whatever "
                f"rows the page cache holds, the rest from disk; _cold: the store's files evicted before each query)")
        for rerank, t in numbers["by_rerank"].items():
            log(f"one query, rerank {rerank} (median of {t['queries']}): first stage "
                f"{t['first_stage_ms_median']:.1f} ms + rerank {t['rerank_ms_median']:.1f} ms + moments top-5 "
                f"{t['moments_ms_median']:.1f} ms = {t['total_ms_median']:.1f} ms (max {t['total_ms_max']:.1f} ms)")
        queries_rss = numbers["query_peak_rss_mb"]
        log(f"peak RSS {numbers['peak_rss_mb']:.0f} MiB with the build"
            + (f", {queries_rss:.0f} MiB while querying (peak reset after the build)" if queries_rss else ""))
        results["million"] = numbers
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


def run_ray(args, results: dict) -> None:
    script = ROOT / "bench" / "bench_ray_index.py"
    if not script.is_file():
        log("ray: bench/bench_ray_index.py does not exist yet; skipped")
        results["ray"] = None
        return
    import shlex

    child = subprocess.run([sys.executable, str(script), *shlex.split(args.ray_args)], capture_output=True, text=True)
    sys.stdout.write(child.stdout)
    lines = [line for line in child.stdout.splitlines() if line.startswith("{")]
    results["ray"] = json.loads(lines[-1]) if child.returncode == 0 and lines else {"failed": child.stderr[-500:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="+", default=["agreement", "million", "ray"],
                        choices=["agreement", "million", "ray"])
    parser.add_argument("--catalog", type=int, default=5000, help="agreement: catalog tracks")
    parser.add_argument("--queries", type=int, default=300, help="agreement: query videos")
    parser.add_argument("--epochs", type=int, default=4, help="agreement: training epochs of the tiny model")
    parser.add_argument("--rerank-sizes", type=int, nargs="+", default=[10, 20, 50, 100, 250, 500, 1000, 2000])
    parser.add_argument("--check-queries", type=int, default=50,
                        help="agreement: queries also run by Retriever.search")
    parser.add_argument("--tracks", type=int, default=1_000_000, help="million: catalog size")
    parser.add_argument("--chunk", type=int, default=20_000, help="million: tracks per Lance write")
    parser.add_argument("--rerank", type=int, nargs="+", default=[1000],
                        help="million: candidates reranked (each size timed)")
    parser.add_argument("--repeats", type=int, default=20, help="million: timed queries")
    parser.add_argument("--first-stage", default="exact", choices=["auto", "exact", "ivf_pq"])
    parser.add_argument("--cold-repeats", type=int, default=5,
                        help="million: queries at the first --rerank size after evicting the store from the page cache")
    parser.add_argument("--compressed-keys", action="store_true",
                        help="million: write the keys column with Lance's default compression (not the store's layout)")
    parser.add_argument("--keys", default="int8", choices=["int8", "float16"],
                        help="million: the store's key encoding (`mgsv index --store ... --keys`; default int8)")
    parser.add_argument("--folder", default=None, help="million: where to build the store (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="million: keep the store (default: deleted)")
    parser.add_argument("--reuse", action="store_true", help="million: query the store kept in --folder")
    parser.add_argument("--ray-args", default="", help='arguments for bench_ray_index.py, one string: "--tracks 8"')
    parser.add_argument("--query-phase", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--store-root", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.query_phase:
        print(json.dumps(query_phase(args)), flush=True)
        return
    log(f"cpus {os.cpu_count()}, load {os.getloadavg()[0]:.2f}")
    results: dict = {"bench": "scale"}
    for section in args.sections:
        {"agreement": run_agreement, "million": run_million, "ray": run_ray}[section](args, results)
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
