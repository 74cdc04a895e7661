"""Benchmark of `mgsv mcp`: suggest_music through the SDK's own client over stdio, cold and warm.

Fixtures as in bench_serve.py (not timed): an index of random AST tokens (`import_tokens`,
each track named after an empty file in a folder the server may read), a randomly
initialised `made` MaDe saved as a checkpoint, a real-size ViT-B/32 CLIP with random
weights loaded through the real open_clip loader (MGSV_CLIP_WEIGHTS), and 24 s 720x1280
30 fps clips.

Then `mgsv mcp` is started over stdio by the client (`mcp.Client` with
`StdioServerParameters`) and timed, per call, as an agent sees it (the JSON-RPC round trip
included):
  - the session: process start, imports, initialize, tools/list (no model loads);
  - the first suggest_music: loads CLIP, MaDe and the index, encodes every track's derived
    rows, then decodes, embeds and ranks the clip (cold);
  - the same clip again (warm: models kept, the clip's CLIP features cached by the engine);
  - other clips (warm models, a clip not seen: decode + CLIP + ranking).

Usage: python bench/bench_mcp.py [--tracks 1000] [--repeats 3] [--clips 3]
Prints numbers and one JSON line; asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

import bench_suggest as fixtures  # noqa: E402  (build_index, save_made_checkpoint, save_random_clip)

CLIP_SECONDS = 24.0


async def session(args, server_args: list[str], env: dict, clips: list[Path]) -> dict:
    from mcp import Client, StdioServerParameters

    params = StdioServerParameters(command=sys.executable, args=["-m", "mgsv_cli", "mcp", *server_args], env=env,
                                   cwd=str(BENCH.parent))

    async def timed(client, tool: str, arguments: dict) -> float:
        t0 = time.perf_counter()
        result = await client.call_tool(tool, arguments)
        seconds = time.perf_counter() - t0
        if result.is_error:
            raise SystemExit(f"{tool} failed: {result.content[0].text}")
        return seconds

    t0 = time.perf_counter()
    with open(os.devnull, "w") as quiet:
        from mcp.client.stdio import stdio_client

        async with Client(stdio_client(params, errlog=quiet), read_timeout_seconds=1800) as client:
            await client.list_tools()
            ready = time.perf_counter() - t0
            first = await timed(client, "suggest_music", {"video": str(clips[0])})
            again = [await timed(client, "suggest_music", {"video": str(clips[0])}) for _ in range(args.repeats)]
            other = [await timed(client, "suggest_music", {"video": str(clip)}) for clip in clips[1:]]
    return {"session_ready_s": ready, "first_suggest_s": first, "warm_same_clip_s": statistics.median(again),
            "warm_new_clip_s": statistics.median(other) if other else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clips", type=int, default=3, help="clips in all: the first is asked again, the rest once")
    args = parser.parse_args()
    import anyio

    from mgsv_cli.features.encoders import PRETRAINED_ENCODER_ID
    from mgsv_cli.media import synth

    with tempfile.TemporaryDirectory(prefix="mgsv_bench_mcp_") as tmp_name:
        tmp = Path(tmp_name)
        home = tmp / "home"
        os.environ["MGSV_HOME"] = str(home)
        index = tmp / "index.sqlite"
        run_dir = home / "data" / "runs" / "bench"
        fixtures.save_made_checkpoint(run_dir)
        fixtures.build_index(index, args.tracks, PRETRAINED_ENCODER_ID)  # tracks named after empty files
        clip_weights = tmp / "random_clip.safetensors"
        fixtures.save_random_clip(clip_weights)
        clips = [synth.synth_clip(tmp / "clips" / f"clip{i}.mp4", seconds=CLIP_SECONDS, with_audio=True,
                                  size=(720, 1280), fps=30, seed=i) for i in range(max(1, args.clips))]
        env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", ""), "MGSV_HOME": str(home),
               "MGSV_CLIP_WEIGHTS": str(clip_weights), "HF_HUB_OFFLINE": "1"}
        server_args = ["--library", str(index), "--checkpoint", str(run_dir), "--device", "cpu", "--offline",
                       "--allow", str(tmp / "clips"), "--output-dir", str(tmp / "outputs")]
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        print(f"{args.tracks} tracks, {CLIP_SECONDS:.0f} s 720x1280 30 fps clips, real-size random CLIP ViT-B/32 and "
              f"MaDe 'made', {os.cpu_count()} CPUs, load average {load}")
        numbers = anyio.run(session, args, server_args, env, clips)
    rows = [("session ready (start, initialize, tools/list; nothing loaded)", numbers["session_ready_s"]),
            ("first suggest_music (loads CLIP, MaDe, the index, its rows)", numbers["first_suggest_s"]),
            (f"the same clip again, warm (median of {args.repeats})", numbers["warm_same_clip_s"]),
            ("another clip, warm models (decode + CLIP + ranking)", numbers["warm_new_clip_s"])]
    print("suggest_music through an MCP client over stdio (the JSON-RPC round trip included):")
    for label, seconds in rows:
        if seconds is not None:
            print(f"  {label:<62} {seconds:7.2f} s")
    print(json.dumps({"tracks": args.tracks, "cpus": os.cpu_count(), "load": load,
                      **{k: None if v is None else round(v, 3) for k, v in numbers.items()}}))


if __name__ == "__main__":
    main()
