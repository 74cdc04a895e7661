"""``make demo``: the whole editor workflow on synthesised media, offline, on a CPU.

Writes a small music library (real audio files) and a clip, then runs the real CLI:
``mgsv index`` -> ``mgsv suggest`` -> ``mgsv render`` with the tiny random encoders and an
untrained MaDe, so it needs no downloads. Everything (the index included) lives under the
output folder, so the user's own mgsv data is untouched.

Usage: ``python -m mgsv_cli.demo [OUT_DIR]`` (default ``demo_out``).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXPLANATION = (
    "This demo ran with --encoders tiny --untrained: random networks, so the ranking and the moment "
    "are arbitrary. Real suggestions need the pretrained encoders (`mgsv models download`) and a "
    "trained checkpoint (`mgsv train --data ROOT`, see the README)."
)


def run_step(args: list[str], env: dict[str, str]) -> None:
    """Run one mgsv command as a user would, showing its output; stop the demo if it fails."""
    print(f"\n$ mgsv {' '.join(args)}", flush=True)
    result = subprocess.run([sys.executable, "-m", "mgsv_cli", *args], env=env)
    if result.returncode != 0:
        raise SystemExit(f"demo step failed (exit {result.returncode}): mgsv {' '.join(args)}")


def make_media(out_dir: Path) -> tuple[Path, Path]:
    """The demo library and clip (reused when already there)."""
    from mgsv_cli.media.synth import make_demo_clip, make_demo_library

    music_dir = out_dir / "music"
    clip = out_dir / "clip.mp4"
    if not music_dir.is_dir() or not any(music_dir.iterdir()):
        print(f"writing a demo music library to {music_dir} ...", flush=True)
        make_demo_library(music_dir, n_tracks=8, seed=0)
    if not clip.is_file():
        print(f"writing a demo clip to {clip} ...", flush=True)
        make_demo_clip(clip, seconds=12.0, seed=0)
    return music_dir, clip


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out_dir = Path(args[0] if args else "demo_out").resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    music_dir, clip = make_media(out_dir)
    env = {**os.environ, "MGSV_HOME": str(out_dir / "mgsv_home"), "HF_HUB_OFFLINE": "1"}
    rendered = out_dir / "clip.with-music.mp4"
    run_step(["index", str(music_dir), "--encoders", "tiny", "--device", "cpu"], env)
    run_step(["suggest", str(clip), "--encoders", "tiny", "--untrained", "--top", "3", "--device", "cpu"], env)
    run_step(["render", str(clip), "-o", str(rendered), "--mix", "duck", "--force"], env)
    print(f"\nrendered: {rendered}")
    print(EXPLANATION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
