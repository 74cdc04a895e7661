"""Fetching the MGSV-EC dataset (CC BY-NC-ND 4.0) from the Hugging Face hub into the
release layout that :mod:`mgsv_cli.research.dataset` owns and reads as is.

Offline or unreachable, it raises one line saying where to download it by hand and the
layout to put it in; after a download it checks the layout arrived complete.
"""
from __future__ import annotations

import os
from pathlib import Path

from mgsv_cli.errors import DataError
from mgsv_cli.features.weights import hub_failure_reason, hub_failure_types, quiet_hub
from mgsv_cli.research.dataset import CSV_DIR, FEATURE_DIRS, SPLITS, csv_path

DATASET_REPO = "xxayt/MGSV-EC"


def fetch_dataset(root: str | os.PathLike, repo_id: str = DATASET_REPO, token: str | None = None) -> Path:
    """Download the MGSV-EC dataset repository into ``root`` (resumable); returns ``root``.

    Already-downloaded files are skipped. Raises DataError (offline, unreachable, or the
    download does not have the official layout), with instructions for a manual download.
    """
    root = Path(root).expanduser()
    if root.exists() and not root.is_dir():
        raise DataError(f"{root} is a file: give a folder for the dataset")
    try:
        from huggingface_hub import snapshot_download

        root.mkdir(parents=True, exist_ok=True)
        with quiet_hub():
            snapshot_download(repo_id=repo_id, repo_type="dataset", local_dir=str(root), token=token)
    except hub_failure_types() as exc:
        raise DataError(
            f"cannot reach the Hugging Face hub to fetch {repo_id} ({hub_failure_reason(exc)}). Download it manually "
            f"(https://huggingface.co/datasets/{repo_id}) and put it under {root} in this layout: "
            f"{layout_description()}"
        ) from None
    problems = dataset_layout_problems(root)
    if problems:
        raise DataError(f"{repo_id} was downloaded to {root} but is not in the layout mgsv reads: "
                        f"{'; '.join(problems)}. Expected: {layout_description()}")
    return root


def layout_description() -> str:
    csvs = ", ".join(f"{split}_data.csv" for split in SPLITS)
    folders = ", ".join(FEATURE_DIRS.values())
    return f"ROOT/{CSV_DIR.as_posix()}/{{{csvs}}} and ROOT/{{{folders}}}/<id>.pt"


def dataset_layout_problems(root: str | os.PathLike) -> list[str]:
    """What is missing from the official MGSV-EC layout under ``root`` (empty when complete)."""
    root = Path(root)
    problems = [f"missing {csv_path(Path(), split)}" for split in SPLITS if not csv_path(root, split).is_file()]
    problems += [f"missing folder {folder}" for folder in FEATURE_DIRS.values() if not (root / folder).is_dir()]
    return problems
