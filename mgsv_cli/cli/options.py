"""The options several commands share, declared once (``Annotated`` types for Typer).

A command writes ``device: Device = None``; the flag, its type and its help come from here,
so ``--device`` reads the same in ``index``, ``suggest``, ``serve``, ``train`` and ``eval``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

DEVICE_HELP = "auto | cpu | cuda[:N] | mps (auto picks the GPU when there is one)"
ENCODERS_HELP = ("pretrained (CLIP ViT-B/32 + AST, what MaDe was trained on) "
                 "| tiny (small random networks: tests, demos)")
INDEX_HELP = "music index database (default: index.sqlite in mgsv's data folder; MGSV_HOME moves it)"
STORE_HELP = INDEX_HELP + "; or a Lance track store: a folder, DIR.lance or s3://... URI"
CHECKPOINT_HELP = "run folder or .safetensors file (default: the latest run)"

Device = Annotated[Optional[str], typer.Option("--device", help=DEVICE_HELP)]
Offline = Annotated[bool, typer.Option("--offline", help="never download encoder weights")]
WeightsDir = Annotated[Optional[Path], typer.Option("--weights-dir",
                                                    help="folder holding downloaded encoder weights")]
# The store a command reads: either backend (``index.backend.open_store`` decides which).
Store = Annotated[Optional[str], typer.Option("--index", help=STORE_HELP)]
Checkpoint = Annotated[Optional[Path], typer.Option("--checkpoint", help=CHECKPOINT_HELP)]
Untrained = Annotated[bool, typer.Option(
    "--untrained", help="random MaDe weights instead of a checkpoint (demo; results are meaningless)")]
StoreEncoders = Annotated[Optional[str], typer.Option("--encoders",
                                                      help=ENCODERS_HELP + " (default: those of the index)")]
NoServer = Annotated[bool, typer.Option("--no-server",
                                        help="do the work in this process even when `mgsv serve` runs")]
Snap = Annotated[Optional[str], typer.Option(
    "--snap", help="beat: start the music on the nearest downbeat/beat | off (default: settings)")]
OverwriteOutputs = Annotated[bool, typer.Option("--force", help="overwrite existing outputs (never the inputs)")]
FIT_HELP = ("cut (the moment, faded out) | ending (the moment, then the track's own ending on the last frame, "
            "joined on bars) | loop (bars repeat to fill a clip longer than the track)")
# suggest: the settings' fit when left out; render and export: as the remembered suggestion was made.
Fit = Annotated[Optional[str], typer.Option("--fit", help=FIT_HELP + " (default: settings)")]
Refit = Annotated[Optional[str], typer.Option("--fit", help=FIT_HELP + " (default: as suggested)")]
