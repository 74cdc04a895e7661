"""The Lance track store at catalog size: reads the two-stage search makes, for N tracks.

Builds a store of N tracks (tiny tokens: the reads measured here never touch them at
size) and one checkpoint's derived rows (pooled float32 [d], keys float16 [S, d]: the ``scoring`` blob) with
Lance directly, in the layout ``lance_store`` writes, then times through the store's API:
opening, ``derived_missing``, ``pooled_matrix`` (first call exports the ``.npy``; later
calls memory-map it), one first-stage product ``pooled @ q`` + top-1000, ``derived_for``
of 1,000 random ids (first call builds the id -> row map), ``tokens_for`` of 10 ids.

    .venv/bin/python bench/bench_lance_store.py --tracks 1000000 --dim 256 --key-windows 4
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _binary(rows, width_bytes: int):
    """A large_binary array of ``rows`` equal-size byte strings taken from one numpy buffer."""
    import numpy as np
    import pyarrow as pa

    offsets = np.arange(rows + 1, dtype=np.int64) * width_bytes
    data = np.random.default_rng(rows).integers(0, 255, rows * width_bytes, dtype=np.uint8)
    return pa.LargeBinaryArray.from_buffers(pa.large_binary(), rows, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def build(root: str, n: int, dim: int, key_windows: int, chunk: int = 100_000) -> str:
    import lance
    import numpy as np
    import pyarrow as pa

    from mgsv_cli.index import lance_store as ls

    fp = "bench0000"
    for start in range(0, n, chunk):
        k = min(chunk, n - start)
        hashes = [f"{i:032x}" for i in range(start, start + k)]
        locations = [f"/catalog/{h}.flac" for h in hashes]
        ids = pa.array([ls.track_key(loc) for loc in locations], pa.int64())
        content_keys = pa.array([ls.track_key(h) for h in hashes], pa.int64())  # what derived rows are current for
        tokens = pa.Table.from_arrays([
            ids, pa.array(locations), pa.array(hashes), pa.array(np.full(k, 140.0)),
            pa.array(["{}"] * k), pa.array(["bench"] * k), pa.array(np.ones(k, np.int32)),
            pa.array(np.full(k, 768, np.int32)),
            _binary(k, 768 * 2), pa.array([b"\x01"] * k, pa.binary()), pa.nulls(k, pa.string()),
            pa.array(np.full(k, 1 << 20, np.int64)), pa.array(np.full(k, 10 ** 18, np.int64)), content_keys,
            pa.nulls(k, pa.string()),  # structure
        ], schema=ls._tracks_schema())
        lance.write_dataset(tokens, ls._join(root, ls.TRACKS_NAME), mode="create" if start == 0 else "append")
        pooled = np.random.default_rng(start).standard_normal((k, dim)).astype(np.float32)
        # Random bit patterns as fp16 keys: what is measured is the read, not the values.
        keys = np.random.default_rng(start + 1).integers(0, 1 << 14, (k, key_windows, dim), dtype=np.uint16)
        derived = pa.Table.from_arrays([
            ids, content_keys, pa.FixedSizeListArray.from_arrays(pa.array(pooled.reshape(-1)), dim),
            pa.array(np.full(k, key_windows, np.int32)),
            ls._scoring_blobs(pooled, keys.view(np.float16), np.ones((k, key_windows), bool), np.full(k, key_windows)),
        ], schema=ls._derived_schema(dim, fp))
        lance.write_dataset(derived, ls._join(root, ls.DERIVED_FOLDER, f"{fp}.lance"),
                            mode="create" if start == 0 else "append")
    return fp


def timed(label: str, fn, results: dict):
    start = time.perf_counter()
    value = fn()
    results[label] = time.perf_counter() - start
    print(f"{label:36s} {results[label] * 1000:10.1f} ms", flush=True)
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--key-windows", type=int, default=4)
    parser.add_argument("--folder", default=None, help="where to build the store (default: a temporary folder)")
    parser.add_argument("--reuse", action="store_true", help="use the store already in --folder (no build)")
    args = parser.parse_args()
    import numpy as np

    folder = Path(args.folder or tempfile.mkdtemp(prefix="mgsv-bench-lance-"))
    os.environ.setdefault("MGSV_HOME", str(folder / "home"))
    from mgsv_cli.index.backend import open_store

    print(f"cpus {os.cpu_count()}, load {os.getloadavg()[0]:.2f}; {args.tracks:,} tracks, d {args.dim}, "
          f"{args.key_windows} key windows; store in {folder}", flush=True)
    results: dict = {}
    root = str(folder / "catalog.lance")
    if args.reuse:
        fp = "bench0000"
        for old in (folder / "home").glob("**/*.npy"):  # the export is part of what is measured
            old.unlink()
    else:
        fp = timed("build (lance.write_dataset)", lambda: build(root, args.tracks, args.dim, args.key_windows),
                   results)
    store = timed("open_store", lambda: open_store(root), results)
    missing = timed("derived_missing", lambda: store.derived_missing(fp), results)
    assert missing == []
    ids, pooled = timed("pooled_matrix (first: export .npy)", lambda: store.pooled_matrix(fp), results)
    fresh = open_store(root)
    ids, pooled = timed("pooled_matrix (again, new handle)", lambda: fresh.pooled_matrix(fp), results)
    query = np.random.default_rng(1).standard_normal(args.dim).astype(np.float32)
    top = timed("pooled @ q + top-1000 (mmap)", lambda: ids[np.argpartition(-(pooled @ query), 1000)[:1000]], results)
    rng = np.random.default_rng(2)
    timed("derived_for 1000 (first: id map)", lambda: fresh.derived_for(fp, top.tolist()), results)
    for k in range(3):
        pick = rng.choice(ids, 1000, replace=False).tolist()
        timed(f"derived_for 1000 random ({k + 1})", lambda: fresh.derived_for(fp, pick), results)
    timed("tokens_for 10", lambda: fresh.tokens_for(top[:10].tolist()), results)


if __name__ == "__main__":
    main()
