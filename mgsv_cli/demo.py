"""``make demo``: the whole loop on synthesised media, offline, on a CPU, with a model that learned.

1. **Synthetic media with a planted link** (``mgsv data synth --media``): music tracks made of
   sections, each in its own key and led by its own instrument, and short clips whose picture
   shows one section's key (as a colour) and instrument (as a pattern); the pairs CSV says which
   moment of which track each clip goes with, and ``mgsv data build``'s code turns them into a
   dataset with the tiny random encoders.
2. **A trained model** (``mgsv train --config tiny-plus``) on those pairs. Steps 1-2 run once:
   the result is cached under mgsv's cache folder (``demo/<key>``), keyed by the sizes, the
   seed and a hash of the code that makes them, so later demos start at step 3.
3. **The editor's loop** on files the model never saw in training: the planted tracks copied
   into ``demo_out/music``, a held-out clip as ``demo_out/clip.mp4``; ``mgsv index`` ->
   ``mgsv suggest --checkpoint`` -> ``mgsv render``. The demo then says what was planted for
   the clip (track and moment), beside what suggest found.

Everything but the code is synthetic: the music, the pictures, the link between them and the
random tiny encoders; the ranking means something only because the model learned the planted
link. Real suggestions need the pretrained encoders and a model trained on real pairs. The
index and the suggestion record live under the output folder (its own MGSV_HOME), so the user's
own mgsv data is untouched; the cache is the one place outside it.

It ends by printing the commands to try next, spelled so that they run as printed from where
``make demo`` ran (``.venv/bin/mgsv``, since the venv is not activated, and the demo's own index
passed with ``--index``); a test runs them.

Usage: ``python -m mgsv_cli.demo [OUT_DIR] [--tracks N] [--clips N] [--epochs N]``
(default ``demo_out``, 8 tracks, 3 training clips per section, 40 epochs: the loop test's sizes).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

SEED = 0
CONFIG = "tiny-plus"
BATCH_SIZE = 16
# The code whose behaviour the cached dataset and checkpoint depend on: a change to any of these
# files makes a new cache key (so an edited generator or recipe never meets an old model).
CACHE_SOURCES = (
    "media/synth.py", "research/synthetic.py", "research/build.py", "research/dataset.py", "research/train.py",
    "research/runs.py", "features/encoders.py", "features/recipe.py", "models/made.py", "models/losses.py",
    "models/variants.py", "models/checkpoint.py", f"models/{CONFIG}.toml",
)

EXPLANATION = (
    "What is synthetic here: all of it but the code. The music and the clips were generated, the link between "
    "them was planted (a clip's colour is its section's key, its pattern the section's lead instrument), and the "
    "encoders are the tiny random ones. The ranking means something only because the tiny-plus model was trained "
    "on those pairs (`mgsv data build` + `mgsv train`). Real suggestions need the pretrained encoders "
    "(`mgsv models download`) and a model trained on real pairs: see the README, \"Train on your own media\"."
)


def run_step(args: list[str], env: dict[str, str]) -> None:
    """Run one mgsv command as a user would, showing its output; stop the demo if it fails."""
    print(f"\n$ mgsv {' '.join(args)}", flush=True)
    result = subprocess.run([sys.executable, "-m", "mgsv_cli", *args], env=env)
    if result.returncode != 0:
        raise SystemExit(f"demo step failed (exit {result.returncode}): mgsv {' '.join(args)}")


def cache_key(tracks: int, clips: int, epochs: int) -> str:
    """What the cached dataset and checkpoint are made from: sizes, seed, version, the code's bytes."""
    import mgsv_cli
    import mgsv_cli.models
    from mgsv_cli import __version__

    package = Path(mgsv_cli.__file__).resolve().parent
    models = Path(mgsv_cli.models.__file__).resolve().parent  # the top-level models/ folder
    digest = hashlib.sha256(json.dumps([__version__, SEED, tracks, clips, epochs, CONFIG, BATCH_SIZE]).encode())
    for name in CACHE_SOURCES:
        path = models / name[len("models/"):] if name.startswith("models/") else package / name
        digest.update(path.read_bytes() if path.is_file() else b"-")
    return f"t{tracks}-c{clips}-e{epochs}-{digest.hexdigest()[:16]}"


def trained_demo(tracks: int, clips: int, epochs: int, env: dict[str, str]) -> Path:
    """``(folder)`` holding ``planted/`` (media + dataset) and ``run/`` (the checkpoint): from the
    cache, or made now (into a temporary folder renamed into place, so a killed demo leaves none)."""
    from mgsv_cli.paths import cache_dir

    folder = cache_dir() / "demo" / cache_key(tracks, clips, epochs)
    if (folder / "run" / "model.safetensors").is_file():
        print(f"using the planted dataset and model trained by an earlier demo: {folder}", flush=True)
        return folder
    work = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    print("first demo on this machine: synthesising a planted dataset and training a model on it "
          "(a few minutes on 2 cores; cached afterwards)", flush=True)
    try:
        run_step(["data", "synth", str(work / "planted"), "--media", "--tracks", str(tracks), "--clips", str(clips),
                  "--seed", str(SEED), "--device", "cpu"], env)
        run_step(["train", "--data", str(work / "planted"), "--config", CONFIG, "--epochs", str(epochs),
                  "--batch-size", str(BATCH_SIZE), "--out", str(work / "run"), "--device", "cpu"], env)
        try:
            os.rename(work, folder)
        except OSError:
            if not (folder / "run" / "model.safetensors").is_file():  # not a twin demo that finished first
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return folder


def make_media(out_dir: Path, planted: Path) -> tuple[Path, Path, dict]:
    """The library (the planted tracks) and the clip (the first held-out clip), copied into
    ``out_dir`` (reused when already there); returns them with the clip's planted pair."""
    from mgsv_cli.research.synthetic import read_planted

    info = read_planted(planted)
    clip_info = next(c for c in info["clips"] if c["split"] == "test")
    music_dir, clip = out_dir / "music", out_dir / "clip.mp4"
    if not music_dir.is_dir() or not any(music_dir.iterdir()):
        shutil.copytree(planted / "media" / "music", music_dir, dirs_exist_ok=True)
    if not clip.is_file():
        shutil.copy2(planted / "media" / clip_info["file"], clip)
    return music_dir, clip, clip_info


def shown(path: Path) -> str:
    """``path`` as the user should type it: relative to where they are when it is below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def next_commands(out_dir: Path, checkpoint: Path, mgsv: str = ".venv/bin/mgsv") -> list[str]:
    """What to try after the demo, on its files, runnable as printed."""
    index, music, clip = (shown(out_dir / name) for name in ("index.sqlite", "music", "clip.mp4"))
    return [
        f"{mgsv} index {music} --index {index} --encoders tiny",
        f"{mgsv} suggest {clip} --index {index} --checkpoint {shown(checkpoint)}",
        f"{mgsv} render {clip} --index {index} -o {shown(out_dir / 'clip.mine.mp4')} --force",
    ]


def describe_result(clip: Path, clip_info: dict, home: Path) -> str:
    """The planted pair of the demo clip beside what suggest ranked first (its remembered record,
    under the demo's own MGSV_HOME)."""
    from mgsv_cli.editor.record import load_last_suggestion
    from mgsv_cli.errors import MgsvError

    planted = (f"planted for this clip: {clip_info['music_id']} from {clip_info['music_start']:.1f} s "
               "(a held-out clip: the model never saw it in training)")
    saved = os.environ.get("MGSV_HOME")
    os.environ["MGSV_HOME"] = str(home)
    try:
        found = load_last_suggestion(clip).suggestions
    except MgsvError:
        return planted
    finally:
        if saved is None:
            os.environ.pop("MGSV_HOME", None)
        else:
            os.environ["MGSV_HOME"] = saved
    ranked = [s for s in found if Path(s.track).stem == clip_info["music_id"]]
    if not ranked:
        return f"{planted}; suggest did not rank it in its top {len(found)}"
    return f"{planted}; suggest ranked it #{ranked[0].rank}, cut from {ranked[0].start:.1f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mgsv_cli.demo", description="mgsv's demo, end to end")
    parser.add_argument("out_dir", nargs="?", default="demo_out")
    parser.add_argument("--tracks", type=int, default=8, help="planted music tracks (3 sections each)")
    parser.add_argument("--clips", type=int, default=3, help="training clips per section")
    parser.add_argument("--epochs", type=int, default=40, help="training epochs (tiny-plus, batch 16)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    started = time.monotonic()
    out_dir = Path(args.out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MGSV_HOME": str(out_dir / "mgsv_home"), "HF_HUB_OFFLINE": "1"}
    cached = trained_demo(args.tracks, args.clips, args.epochs, env)
    checkpoint = cached / "run"
    music_dir, clip, clip_info = make_media(out_dir, cached / "planted")
    index = str(out_dir / "index.sqlite")
    rendered = out_dir / "clip.with-music.mp4"
    run_step(["index", str(music_dir), "--index", index, "--encoders", "tiny", "--device", "cpu"], env)
    run_step(["suggest", str(clip), "--index", index, "--checkpoint", str(checkpoint), "--top", "3",
              "--device", "cpu"], env)
    run_step(["render", str(clip), "--index", index, "-o", str(rendered), "--mix", "replace", "--force"], env)
    print(f"\nrendered: {shown(rendered)}")
    print(describe_result(clip, clip_info, out_dir / "mgsv_home"))
    print(EXPLANATION)
    print(f"(demo took {time.monotonic() - started:.0f} s)")
    print("\nTry it yourself (or `source .venv/bin/activate` once, then plain `mgsv ...`):")
    for command in next_commands(out_dir, checkpoint):
        print(f"  {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
