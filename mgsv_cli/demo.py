"""``make demo``: the whole editor workflow on synthesised media, offline, on a CPU.

Writes a small music library (real audio files) and a clip, then runs the real CLI:
``mgsv index`` -> ``mgsv suggest`` -> ``mgsv render`` with the tiny random encoders and an
untrained MaDe, so it needs no downloads. Everything (the index included) lives under the
output folder, so the user's own mgsv data is untouched.

It ends by printing the commands to try next, spelled so that they run as printed from
where ``make demo`` ran (``.venv/bin/mgsv``, since the venv is not activated, and the
demo's own index passed with ``--index``); a test runs them.

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


def shown(path: Path) -> str:
    """``path`` as the user should type it: relative to where they are when it is below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def next_commands(out_dir: Path, mgsv: str = ".venv/bin/mgsv") -> list[str]:
    """What to try after the demo, on its files, runnable as printed."""
    index, music, clip = (shown(out_dir / name) for name in ("index.sqlite", "music", "clip.mp4"))
    return [
        f"{mgsv} index {music} --index {index} --encoders tiny",
        f"{mgsv} suggest {clip} --index {index} --untrained",
        f"{mgsv} render {clip} --index {index} -o {shown(out_dir / 'clip.mine.mp4')} --force",
    ]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out_dir = Path(args[0] if args else "demo_out").resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    music_dir, clip = make_media(out_dir)
    env = {**os.environ, "MGSV_HOME": str(out_dir / "mgsv_home"), "HF_HUB_OFFLINE": "1"}
    index = str(out_dir / "index.sqlite")
    rendered = out_dir / "clip.with-music.mp4"
    run_step(["index", str(music_dir), "--index", index, "--encoders", "tiny", "--device", "cpu"], env)
    run_step(["suggest", str(clip), "--index", index, "--untrained", "--top", "3", "--device", "cpu"], env)
    run_step(["render", str(clip), "--index", index, "-o", str(rendered), "--mix", "duck", "--force"], env)
    print(f"\nrendered: {shown(rendered)}")
    print(EXPLANATION)
    print("\nTry it yourself (or `source .venv/bin/activate` once, then plain `mgsv ...`):")
    for command in next_commands(out_dir):
        print(f"  {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
