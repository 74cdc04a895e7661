"""Curves a researcher can look at: TensorBoard event files and PNGs of training and evaluation.

- ``mgsv train`` writes, into the run folder, TensorBoard event files (:class:`CurveLog`:
  every training loss term, the gradient norm before clipping and the learning rate per
  step; every validation number and the network's learned scalars per epoch) and
  ``curves.png`` (:func:`plot_history`) when the run ends (an interrupted run has its event
  files; its picture comes when the resumed run ends). ``tensorboard --logdir RUNS_FOLDER``
  compares runs.
- ``mgsv eval --plots DIR`` writes :func:`write_eval_plots`: a histogram of the per-video
  IoU, R@k and MoR@k against k, and a per-category table (CSV and Markdown).
- ``bench/bench_quality.py`` draws one picture per data regime with :func:`plot_comparison`.

Design decisions:

- Every TensorBoard scalar is indexed by the optimisation step (a validation at the step
  its epoch ended), so train and val curves share one axis in TensorBoard; ``curves.png``
  is drawn per epoch from the run's history (``state.json``), so a resumed run's picture
  covers all of it. Drawing it takes a few seconds on a loaded CPU, so it is drawn once,
  not after every epoch. A resumed run appends a new event file; TensorBoard merges them by step.
- The event files are written by TensorBoard's own writer (``torch.utils.tensorboard``) and
  tests read them back with TensorBoard's own reader, so they open in TensorBoard.
- Plots use matplotlib's object API (``Figure`` on the Agg canvas), never ``pyplot``: no
  global backend is switched and no window can open, whatever the caller's session.
- tensorboard and matplotlib are imported inside the functions that use them: the CLI's
  ``--help`` and the rest of the library never pay for them.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

CURVES_NAME = "curves.png"
VAL_PANELS = (("mIoU", ("miou", "miou_cut")), ("R@k (%)", ("r1", "r5", "r10")),
              ("MoR@k (%)", ("mor1", "mor10", "mor100")))


# ----------------------------------------------------------------------------- learned scalars


def learned_scalars(model) -> dict[str, float]:
    """The network's learned scalars by name: the model's own ``learned_scalars()`` when it has
    one (values as they act, e.g. exp of a stored log), else every one-element parameter as stored."""
    own = getattr(model, "learned_scalars", None)
    if callable(own):
        return {str(k): float(v) for k, v in own().items()}
    return {name: float(p.detach().float().reshape(())) for name, p in model.named_parameters() if p.numel() == 1}


# ----------------------------------------------------------------------------- TensorBoard


class CurveLog:
    """TensorBoard event files in a run folder; the writer opens on first use.

    Tags: ``train/<term>`` (``loss`` and each loss term), ``train/grad_norm``, ``train/lr`` per
    step; ``val/<metric>`` (every number validation returns, and ``score``), ``train/epoch_loss``
    and ``learned/<name>`` per epoch.
    """

    def __init__(self, run_dir: Path, prefix: str = ""):
        self.run_dir = Path(run_dir)
        self.prefix = prefix  # ReAL's stages: "retrieval/", "localisation/"
        self._writer: Any = None  # a SummaryWriter, made on the first scalar (importing it costs seconds)

    def _scalar(self, tag: str, value: Any, step: int) -> None:
        if value is None or isinstance(value, (str, bool)) or not math.isfinite(float(value)):
            return
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.run_dir))
        self._writer.add_scalar(self.prefix + tag, float(value), global_step=int(step))

    def step(self, step: int, terms: Mapping[str, float], lr: float) -> None:
        """One optimisation step: its loss terms (``loss`` the total), ``grad_norm`` among them if known."""
        for name, value in terms.items():
            self._scalar(f"train/{name}", value, step)
        self._scalar("train/lr", lr, step)

    def epoch(self, step: int, record: Mapping[str, Any], learned: Mapping[str, float]) -> None:
        """The end of an epoch: its history ``record`` (val metrics, ``score``, ``train_loss``) and
        the learned scalars."""
        skip = {"epoch", "best", "train_loss", "train_terms", "lr", "learned", "split", "n", "n_tracks", "stage"}
        for key, value in record.items():
            if key not in skip:
                self._scalar(f"val/{key}", value, step)
        self._scalar("train/epoch_loss", record.get("train_loss"), step)
        for name, value in learned.items():
            self._scalar(f"learned/{name}", value, step)
        self.flush()

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a run folder's event files, read with TensorBoard's own reader: tag ->
    [(step, value)] in step order (for tests and scripts)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: sorted((e.step, e.value) for e in events.Scalars(tag)) for tag in events.Tags()["scalars"]}


# ----------------------------------------------------------------------------- PNGs


def _figure(rows: int, cols: int, width: float = 4.2, height: float = 3.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width * cols, height * rows), dpi=90, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, cols, squeeze=False)
    return figure, axes


def _save(figure, path: Path) -> Path:
    from mgsv_cli.paths import atomic_write_bytes

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)


def plot_history(history: Sequence[Mapping[str, Any]], path: Path, title: str = "") -> Path:
    """``curves.png`` of a run from its per-epoch history records: train loss and its terms,
    learning rate, the learned scalars, and val mIoU, R@k and MoR@k (the kept epoch marked)."""
    figure, axes = _figure(2, 3)
    epochs = [r["epoch"] for r in history]
    best = max(history, key=lambda r: r.get("score", -math.inf), default=None)
    loss_ax, lr_ax, learned_ax = axes[0]
    loss_ax.plot(epochs, [r.get("train_loss") for r in history], marker="o", label="total")
    for term in sorted({t for r in history for t in r.get("train_terms", {})} - {"loss", "grad_norm"}):
        loss_ax.plot(epochs, [r.get("train_terms", {}).get(term, np.nan) for r in history], marker=".", label=term)
    loss_ax.set(title="train loss (epoch mean)", xlabel="epoch")
    lr_ax.plot(epochs, [r.get("lr", np.nan) for r in history], marker="o", label="lr (epoch end)")
    norms = [r.get("train_terms", {}).get("grad_norm", np.nan) for r in history]
    if not all(np.isnan(norms)):
        twin = lr_ax.twinx()
        twin.plot(epochs, norms, color="tab:red", marker=".", label="grad norm (before clipping)")
        twin.set_ylabel("grad norm", color="tab:red")
    lr_ax.set(title="learning rate", xlabel="epoch")
    for name in sorted({n for r in history for n in r.get("learned", {})}):
        learned_ax.plot(epochs, [r.get("learned", {}).get(name, np.nan) for r in history], marker="o", label=name)
    learned_ax.set(title="learned scalars", xlabel="epoch")
    for ax, (label, keys) in zip(axes[1], VAL_PANELS):
        for key in keys:
            if any(key in r for r in history):
                ax.plot(epochs, [r.get(key, np.nan) for r in history], marker="o", label=key)
        if best is not None:
            ax.axvline(best["epoch"], color="grey", linestyle=":", label=f"kept (epoch {best['epoch']})")
        ax.set(title=f"val {label}", xlabel="epoch")
    for ax in axes.flat:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def plot_comparison(curves: Mapping[str, Mapping[str, Mapping[str, Sequence[Sequence[float]]]]], path: Path, title: str,
                    metrics: Sequence[str] = ("r1", "r5", "miou", "mor1")) -> Path:
    """One picture comparing variants' val curves: ``curves[row][variant][metric]`` is one list of
    per-epoch values per seed. One row of panels per ``row`` (e.g. a budget), one panel per metric;
    each variant's mean over seeds as a line, its seeds' min-max as a band."""
    rows = list(curves)
    figure, axes = _figure(max(1, len(rows)), len(metrics), width=3.8, height=2.9)
    colours: dict[str, str] = {}
    for r, row in enumerate(rows):
        for c, metric in enumerate(metrics):
            ax = axes[r][c]
            for variant, by_metric in curves[row].items():
                runs = [list(seed) for seed in by_metric.get(metric, []) if len(seed)]
                if not runs:
                    continue
                length = min(len(run) for run in runs)
                values = np.array([run[:length] for run in runs], dtype=float)
                epochs = np.arange(1, length + 1)
                colour = colours.setdefault(variant, f"C{len(colours) % 10}")
                ax.plot(epochs, values.mean(0), color=colour, marker=".", label=f"{variant} (n={len(runs)})")
                ax.fill_between(epochs, values.min(0), values.max(0), color=colour, alpha=0.15)
            ax.set(title=f"{row}: val {metric}", xlabel="epoch")
            if r == 0 and c == 0 and ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    figure.suptitle(title)
    return _save(figure, path)


# ----------------------------------------------------------------------------- evaluation plots

EVAL_PLOTS = ("iou_histogram.png", "recall_at_k.png", "per_category.csv", "per_category.md")


def per_category_rows(categories: Sequence[str], ranks: np.ndarray, ious: np.ndarray,
                      iou_threshold: float) -> list[dict[str, Any]]:
    """mIoU, R@1/5/10 and MoR@1/10 of each video category, then ``all``; sorted by size."""
    labels = np.asarray(categories).astype(str)
    groups = sorted(set(labels), key=lambda c: (-int((labels == c).sum()), c))
    rows = []
    masks: list[tuple[str, np.ndarray]] = [(c, labels == c) for c in groups]
    for name, keep in masks + [("all", np.ones(len(labels), dtype=bool))]:
        r, iou = np.asarray(ranks)[keep], np.asarray(ious)[keep]
        row = {"category": name, "n": int(keep.sum()), "miou": float(iou.mean()) if keep.any() else float("nan")}
        row.update({f"r{k}": float(100.0 * (r < k).mean()) for k in (1, 5, 10)})
        row.update({f"mor{k}": float(100.0 * ((r < k) & (iou > iou_threshold)).mean()) for k in (1, 10)})
        rows.append(row)
    return rows


def write_eval_plots(details: Mapping[str, Any], folder: Path, title: str, iou_threshold: float) -> list[Path]:
    """The plots of one evaluation: ``details`` has per-video ``ranks`` (0-based rank of the GT
    track), ``ious`` (paper protocol), ``cut_ious`` and ``categories``, and ``n_tracks``.
    Writes :data:`EVAL_PLOTS` into ``folder`` (created); returns their paths."""
    from mgsv_cli.errors import storage_error

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise storage_error("write", folder, exc) from None
    ranks, ious = np.asarray(details["ranks"]), np.asarray(details["ious"])
    cut_ious = np.asarray(details.get("cut_ious", ious))
    written = []

    figure, axes = _figure(1, 1, width=5.5, height=3.6)
    ax = axes[0][0]
    bins = np.linspace(0.0, 1.0, 21)
    ax.hist(ious, bins=bins, alpha=0.6, label=f"paper protocol (mIoU {ious.mean():.3f})")
    ax.hist(cut_ious, bins=bins, histtype="step", linewidth=1.5, label=f"exact-length cut (mIoU {cut_ious.mean():.3f})")
    ax.axvline(iou_threshold, color="grey", linestyle=":", label=f"MoR threshold {iou_threshold}")
    ax.set(title=f"{title}: IoU on the GT track", xlabel="IoU", ylabel="videos")
    ax.legend(fontsize=7)
    written.append(_save(figure, folder / EVAL_PLOTS[0]))

    figure, axes = _figure(1, 1, width=5.5, height=3.6)
    ax = axes[0][0]
    n_tracks = max(1, int(details.get("n_tracks") or (ranks.max() + 1 if ranks.size else 1)))
    ks = np.unique(np.round(np.logspace(0, math.log10(n_tracks), 60)).astype(int))
    ax.plot(ks, [100.0 * (ranks < k).mean() for k in ks], label="R@k")
    ax.plot(ks, [100.0 * ((ranks < k) & (ious > iou_threshold)).mean() for k in ks],
            label=f"MoR@k (IoU > {iou_threshold})")
    for k in (1, 5, 10, 100):
        if k <= n_tracks:
            ax.axvline(k, color="grey", linewidth=0.5, linestyle=":")
    ax.set(title=f"{title}: recall at k of {n_tracks} tracks", xlabel="k", ylabel="% of videos", xscale="log",
           ylim=(0, 100))
    ax.legend(fontsize=7)
    written.append(_save(figure, folder / EVAL_PLOTS[1]))

    rows = per_category_rows(details["categories"], ranks, ious, iou_threshold)
    keys = list(rows[0])
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    written.append(_write_text(folder / EVAL_PLOTS[2], text.getvalue()))
    written.append(_write_text(folder / EVAL_PLOTS[3], _markdown_table(rows, keys, title)))
    return written


def _markdown_table(rows: Iterable[Mapping[str, Any]], keys: Sequence[str], title: str) -> str:
    def cell(key: str, value: Any) -> str:
        if key == "miou":
            return f"{value:.3f}"
        return f"{value:.1f}" if isinstance(value, float) else str(value)

    lines = [f"{title}: per category (mIoU a fraction, the rest % of the category's videos)", "",
             "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(k, row[k]) for k in keys) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _write_text(path: Path, text: str) -> Path:
    from mgsv_cli.paths import atomic_write_text

    atomic_write_text(Path(path), text)
    return Path(path)
