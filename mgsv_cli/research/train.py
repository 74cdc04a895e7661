"""Training MaDe on MGSV-EC (spec section 4, Training).

Loss = symmetric InfoNCE on both similarity matrices + 4 x L1 + (1 - GIoU) on every decoder
layer; Adam (no weight decay), linear warm-up over 2% of the steps then cosine to zero per
step, gradients clipped at 1.0; the weights that score best on val are kept. A made-plus
model with a querybank (``querybank_size``) has it refilled before every validation: the
pooled vectors of the same sample of training videos (:func:`fill_querybank`), under the
epoch's weights, so val ranks the way the saved checkpoint will.

On a CUDA GPU the features live on the device (``dataset.place_split``: the packed
split is copied there once when it fits in half the free memory, and every batch is
gathered there), the network runs under bf16 autocast (``device.compute_dtype``) and Adam
is the fused CUDA kernel; a split too large for the GPU is read from the memory map with
the next batch gathered on a background thread. On a CPU the loop is what it always was
(memory-mapped batches, the default Adam). ``compile=True`` (``mgsv train --compile``)
runs the training forward through ``torch.compile``: off by default everywhere, since
the first steps pay for compilation and the padding trims make shapes vary.

The loop reports through a :class:`Reporter` so the library stays free of any UI; the CLI
draws rich progress bars from it. What a researcher looks at afterwards goes into the run
folder (:mod:`~mgsv_cli.research.curves`): TensorBoard event files (each loss term, the
gradient norm before clipping and the learning rate per step; every val number and the
learned scalars per epoch, also kept in the history records) as it goes, and ``curves.png``
when the run ends (from the history, so a resumed run's picture covers all its epochs).

A run resumes exactly from its last finished epoch: the weights, the Adam moments, the
schedule position and the RNG state are saved after each.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mgsv_cli.errors import UsageError
from mgsv_cli.features.recipe import describe_encoders
from mgsv_cli.models.checkpoint import WEIGHTS_NAME, atomic_write_json, save_checkpoint
from mgsv_cli.models.variants import VariantConfig, variant_to_dict
from mgsv_cli.research.curves import CURVES_NAME, CurveLog, plot_history
from mgsv_cli.research.runs import (  # noqa: F401  (re-exported: the library API of training)
    PAPER_METRICS,
    Reporter,
    RunLog,
    TrainResult,
    choose_run_dir,
    latest_resumable,
    learning_rate,
    load_resume_point,
    new_run_dir,
    restore_optimizer,
    save_resume_point,
    saved_epochs_done,
    saved_variant,
    selection_score,
)


@dataclass
class _State:
    """Where a run stands; saved as state.json after every epoch."""

    epochs_done: int = 0
    step: int = 0
    best_score: float = -math.inf
    history: list[dict[str, Any]] = field(default_factory=list)


# ----------------------------------------------------------------------------- schedule and score


# ----------------------------------------------------------------------------- the loop


def build_optimizer(model, variant: VariantConfig, device=None):
    """Adam without weight decay; the fused single-kernel Adam when the weights are on CUDA."""
    import torch

    fused = getattr(device, "type", None) == "cuda"
    if fused:
        return torch.optim.Adam(model.parameters(), lr=variant.train.lr, weight_decay=0.0, fused=True)
    return torch.optim.Adam(model.parameters(), lr=variant.train.lr, weight_decay=0.0)


def compiled_forward(model):
    """``torch.compile(model)`` for the training forward (the weights stay ``model``'s)."""
    import torch

    return torch.compile(model)


def train_step(model, optimizer, batch, variant: VariantConfig, lr: float, dtype, forward=None,
               terms: dict[str, float] | None = None) -> float:
    """One optimisation step on a batch of matched pairs; returns the loss.

    ``forward``: what runs the network (``model`` itself, or its compiled form). ``terms``, when
    given, receives the loss's terms (``matching``, ``detection``, ``start`` with the pointer),
    the total as ``loss`` and the gradient norm before clipping (``grad_norm``), as floats.
    """
    import torch

    from mgsv_cli.models.losses import detection_loss, matching_loss, start_window_loss

    recipe = variant.train
    forward = model if forward is None else forward
    for group in optimizer.param_groups:
        group["lr"] = lr
    with torch.autocast(batch.frames.device.type, dtype=dtype, enabled=dtype != torch.float32):
        if recipe.detect_grad_scale == 1.0:  # the paper's: nothing between detection and the enhancers
            out = forward(batch.frames, batch.frame_mask, batch.windows, batch.window_mask)
        else:
            out = forward(batch.frames, batch.frame_mask, batch.windows, batch.window_mask,
                          detect_grad_scale=recipe.detect_grad_scale)
    same_track = recipe.mask_same_track_negatives or recipe.same_track_positives
    track_ids = batch.track_index if same_track else None
    parts = {"matching": matching_loss(out["mean_sim"], out["xpool_sim"], model.logit_scale, track_ids,
                                       recipe.same_track_positives)}
    parts["detection"] = detection_loss(out["spans"], batch.span, recipe.l1_weight, recipe.giou_weight)
    loss = parts["matching"] + parts["detection"]
    if "start_logits" in out:  # made-plus start_pointer
        parts["start"] = start_window_loss(out["start_logits"], batch.span, model.cfg.n_windows)
        loss = loss + recipe.start_weight * parts["start"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
    optimizer.step()
    if terms is not None:
        terms.update({name: float(value.detach()) for name, value in parts.items()})
        terms["grad_norm"] = float(grad_norm)
    return float(loss.detach())


def run_epoch(model, optimizer, split, variant, epoch, state: _State, total_steps, device, dtype, reporter,
              forward=None, curves=None, epoch_terms: dict[str, float] | None = None) -> float:
    """One pass over the training split (a fresh shuffle per epoch); returns the mean loss.

    ``split`` is a memory-mapped ``SplitData`` or a ``DeviceSplit`` (same rows either way).
    ``curves`` (a :class:`~mgsv_cli.research.curves.CurveLog`) gets every step's loss terms and
    learning rate; ``epoch_terms``, when given, receives their means over the epoch.
    """
    recipe = variant.train
    model.train()
    losses = []
    sums: dict[str, float] = {}
    batches = split.batches(recipe.batch_size, shuffle=True, seed=recipe.seed + epoch, drop_last=True)
    if getattr(device, "type", None) == "cuda" and not hasattr(split, "device"):
        batches = gathered_ahead(batches, pin=True)  # host path on a GPU: the CPU gathers while the GPU runs
    for batch in batches:
        lr = learning_rate(state.step, total_steps, recipe.lr, recipe.warmup_fraction)
        terms: dict[str, float] = {}
        loss = train_step(model, optimizer, batch.to(device, non_blocking=True), variant, lr, dtype, forward,
                          terms=terms)
        state.step += 1
        losses.append(loss)
        reporter.step(loss, lr)
        terms["loss"] = loss
        for name, value in terms.items():
            sums[name] = sums.get(name, 0.0) + value
        if curves is not None:
            curves.step(state.step, terms, lr)
    if epoch_terms is not None:
        epoch_terms.update({name: total / max(1, len(losses)) for name, total in sums.items()})
    return float(sum(losses) / max(1, len(losses)))


def gathered_ahead(batches, pin: bool = False, depth: int = 2):
    """``batches`` produced on a background thread, up to ``depth`` ahead, in order.

    ``pin`` puts each batch in page-locked memory so its copy to the GPU can overlap
    compute. Gathering rows from the memory map is the CPU's part of a step; this keeps
    it off the step's critical path.
    """
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    def produce(iterator):
        batch = next(iterator, None)
        if batch is not None and pin:
            batch = type(batch)(**{name: getattr(batch, name).pin_memory() for name in batch.__dataclass_fields__})
        return batch

    iterator = iter(batches)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mgsv-batches") as pool:
        pending = deque(pool.submit(produce, iterator) for _ in range(depth))
        while True:
            batch = pending.popleft().result()
            if batch is None:
                break
            pending.append(pool.submit(produce, iterator))
            yield batch


def fill_querybank(model, train_split, seed: int, device, batch_size: int = 256) -> None:
    """Refill a made-plus model's querybank (no-op without one) with the pooled vectors of
    ``querybank_size`` distinct training videos, a sample fixed by ``seed``, under the
    current weights (eval mode, no gradients; no RNG state is touched, so resuming stays exact)."""
    import numpy as np
    import torch

    size = model.cfg.querybank_size
    if size <= 0:
        return
    videos = np.unique(np.asarray(train_split.video_index))
    videos = np.sort(np.random.default_rng(seed).permutation(videos)[:size])
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            pooled = [model.encode_video(*train_split.video_inputs(videos[begin:begin + batch_size], device)).pooled
                      for begin in range(0, len(videos), batch_size)]
        model.set_querybank(torch.cat(pooled))
    finally:
        model.train(was_training)


def validate_and_save(model, optimizer, val_split, variant, run_dir: Path, state: _State, train_loss: float,
                      device, dtype, train_split=None, train_terms: dict[str, float] | None = None,
                      lr: float | None = None, curves=None) -> dict[str, Any]:
    """Score the epoch's weights on val, keep them if best, save the resume state; returns the record.
    ``train_split``: where a made-plus querybank is sampled from (:func:`fill_querybank`).
    ``train_terms`` (the epoch's mean loss terms), ``lr`` (the last step's) and the learned scalars
    go into the history record for ``curves.png``; ``curves`` (a ``CurveLog``) gets the record."""
    from mgsv_cli.research.curves import learned_scalars
    from mgsv_cli.research.evaluation import evaluate_model

    if train_split is not None:
        fill_querybank(model, train_split, variant.train.seed, device, variant.train.eval_batch_size)
    metrics = evaluate_model(model, val_split, device, batch_size=variant.train.eval_batch_size, dtype=dtype)
    score = selection_score(metrics)
    is_best = score > state.best_score
    state.epochs_done += 1
    record = {"epoch": state.epochs_done, "train_loss": train_loss, "score": score, **metrics}
    learned = learned_scalars(model)
    record.update(train_terms=dict(train_terms or {}), lr=lr, learned=learned)
    state.history.append(record)
    if curves is not None:
        curves.epoch(state.step, record, learned)
    if is_best:
        state.best_score = score
        save_checkpoint(run_dir, model, variant, {"epoch": state.epochs_done, "score": score, "val": metrics,
                                                  "params": model.parameter_counts()})
    _save_last(run_dir, model, optimizer, variant, state)
    return {**record, "best": is_best}


def train(
    data_root: str | Path,
    variant: VariantConfig,
    out_dir: str | Path | None = None,
    device: str = "auto",
    resume: bool = False,
    reporter: Reporter | None = None,
    asked: dict[str, Any] | None = None,
    compile: bool = False,
    resident: str = "auto",
    stage: str = "both",
) -> TrainResult:
    """Train (or resume) a MaDe run on the MGSV-EC layout at ``data_root``; returns the run folder.

    ``compile``: run the training forward through ``torch.compile`` (opt-in; not part of
    the recipe, so a resumed run may change it). ``resident``: ``auto`` keeps the splits on
    a CUDA device when they fit (see ``dataset.place_split``), ``always``/``never`` force it.
    A GPU that runs out of memory stops the run with a one-line error naming ``--batch-size``.
    A ReAL variant (``family = "real"``), or resuming/continuing a ReAL run, is trained by
    :func:`mgsv_cli.research.train_real.train_real` in two stages; ``stage`` (``both``,
    ``retrieval``, ``localisation``) is for those only.

    ``asked``: the recipe values the user set explicitly (``epochs``, ``batch_size``, ``lr``,
    ``precision``, ``seed``, and ``model`` for a chosen variant). A resumed run keeps its own
    recipe: a larger (or smaller, but not below what is done) ``epochs`` continues to that many
    epochs, and anything else that differs from the saved run is a UsageError, never ignored.
    """
    import torch

    from mgsv_cli.device import compute_dtype, device_name, out_of_memory_hint, resolve_device, tune_malloc_for_training
    from mgsv_cli.models.made import MaDe
    from mgsv_cli.research.dataset import load_split, place_split

    if _family_to_train(out_dir, variant, resume, stage, asked or {}) == "real":  # ReAL: two stages
        from mgsv_cli.research.train_real import train_real

        return train_real(data_root, variant, out_dir=out_dir, device=device, resume=resume, reporter=reporter,
                          asked=asked, stage=stage)
    if stage != "both":
        raise UsageError(f"--stage {stage} is for ReAL configs (two stages); MaDe trains in one")
    reporter = reporter or Reporter()
    torch_device = resolve_device(device)
    run_dir = choose_run_dir(Path(out_dir).expanduser() if out_dir else None, variant, resume)
    if resume:
        variant = resumed_variant(saved_variant(run_dir), saved_epochs_done(run_dir), asked or {}, run_dir)
    recipe = variant.train
    tune_malloc_for_training()

    train_split = load_split(data_root, "train")
    val_split = load_split(data_root, "val")
    steps_per_epoch = train_split.n // recipe.batch_size
    if steps_per_epoch < 1:
        raise UsageError(f"batch size {recipe.batch_size} is larger than the training split ({train_split.n} videos)")
    total_steps = steps_per_epoch * recipe.epochs

    torch.manual_seed(recipe.seed)  # seeds every CUDA device too
    model = MaDe(variant.model).to(torch_device)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(recipe.logit_scale_init))
    optimizer = build_optimizer(model, variant, torch_device)
    state = _State()
    if resume:
        state = _restore(run_dir, model, optimizer)
    dtype = compute_dtype(torch_device, recipe.precision)
    forward = compiled_forward(model) if compile else model
    with out_of_memory_hint("loading the features", "--batch-size", recipe.batch_size, torch_device):
        train_split = place_split(train_split, torch_device, resident)
        val_split = place_split(val_split, torch_device, resident)
    features = "on the device" if hasattr(train_split, "device") else "memory-mapped"

    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "config.json", variant_to_dict(variant))
    log = RunLog(run_dir / "train.log")
    curves = CurveLog(run_dir)
    info = {
        "run_dir": str(run_dir), "variant": variant.name, "device": str(torch_device),
        "dtype": str(dtype).replace("torch.", ""), "params": model.parameter_counts(),
        "n_train": train_split.n, "n_val": val_split.n, "steps_per_epoch": steps_per_epoch,
        "epochs": recipe.epochs, "start_epoch": state.epochs_done,
        "hardware": device_name(torch_device), "features": features, "compile": bool(compile),
        "fused_adam": torch_device.type == "cuda",
        # What `mgsv suggest` will need to use this checkpoint: an index of the same encoders.
        "encoders": describe_encoders(variant.model.video_dim, variant.model.music_dim),
    }
    log.write(("resumed" if resume else "started") + " " + json.dumps(info))
    reporter.start(info)

    try:
        for epoch in range(state.epochs_done, recipe.epochs):
            reporter.start_epoch(epoch, recipe.epochs, steps_per_epoch)
            with out_of_memory_hint("training", "--batch-size", recipe.batch_size, torch_device):
                terms: dict[str, float] = {}
                train_loss = run_epoch(model, optimizer, train_split, variant, epoch, state, total_steps,
                                       torch_device, dtype, reporter, forward, curves, terms)
                lr = learning_rate(max(0, state.step - 1), total_steps, recipe.lr, recipe.warmup_fraction)
                record = validate_and_save(model, optimizer, val_split, variant, run_dir, state, train_loss,
                                           torch_device, dtype, train_split, terms, lr, curves)
            log.write(json.dumps(record))
            reporter.end_epoch(epoch, train_loss, {k: record[k] for k in record if k not in ("epoch", "best")},
                               record["best"])
    except KeyboardInterrupt:
        log.write(f"interrupted after {state.epochs_done} finished epoch(s)")
        reporter.interrupted(run_dir, state.epochs_done)
        raise
    finally:
        curves.close()

    if state.history:
        plot_history(state.history, run_dir / CURVES_NAME, f"{variant.name}: {run_dir.name}")
    best = max(state.history, key=lambda r: r["score"], default={})
    return TrainResult(run_dir=run_dir, best_metrics=best, history=state.history)


# ----------------------------------------------------------------------------- resume


def _family_to_train(out_dir, variant: VariantConfig, resume: bool, stage: str, asked: dict[str, Any]) -> str:
    """The model family of the run to train: a resumed or continued run's own, else the variant's.

    A --config of another family than that run's is a clear error, never a silent switch.
    """
    from mgsv_cli.models.checkpoint import FAMILY_NAMES

    folder = Path(out_dir).expanduser() if out_dir else (latest_resumable() if resume else None)
    continuing = resume or (stage != "both" and folder is not None and (folder / WEIGHTS_NAME).is_file())
    if not continuing or folder is None or not (folder / "config.json").is_file():
        return variant.family
    family = saved_variant(folder).family
    if asked.get("model") is not None and variant.family != family:
        raise UsageError(f"{folder} is a {FAMILY_NAMES.get(family, family)} run; --config {variant.name} is a "
                         f"{FAMILY_NAMES.get(variant.family, variant.family)} config: drop --config, or start a "
                         "new run with another --out")
    return family


def _save_last(run_dir: Path, model, optimizer, variant: VariantConfig, state: _State) -> None:
    save_resume_point(run_dir, model, optimizer, variant, dataclasses.asdict(state))


def _restore(run_dir: Path, model, optimizer) -> _State:
    state = _State(**json.loads((run_dir / "state.json").read_text()))
    restore_optimizer(model, optimizer, load_resume_point(run_dir, model), state.step)
    return state


def resumed_variant(saved: VariantConfig, epochs_done: int, asked: dict[str, Any], run_dir: Path) -> VariantConfig:
    """The recipe to continue ``run_dir`` with: the saved one, with only ``epochs`` changeable."""
    model = asked.get("model")
    if model is not None and model != saved.model:
        raise UsageError(f"--config asks for another model than the run in {run_dir} was trained with: "
                         "resume it without --config, or start a new run with another --out")
    for key in ("batch_size", "lr", "precision", "seed"):
        value = asked.get(key)
        if value is not None and value != getattr(saved.train, key):
            flag = "--" + key.replace("_", "-")
            raise UsageError(f"{flag} {value} conflicts with the run in {run_dir} ({key} {getattr(saved.train, key)}): "
                             f"a resumed run keeps its recipe; drop {flag}, or start a new run with another --out")
    epochs = asked.get("epochs")
    if epochs is None:
        if epochs_done >= saved.train.epochs:
            raise UsageError(f"the run in {run_dir} already finished its {saved.train.epochs} epochs: "
                             f"pass --epochs N (more than {epochs_done}) to train it further")
        return saved
    if epochs <= epochs_done:
        raise UsageError(f"--epochs {epochs}: the run in {run_dir} has already finished {epochs_done} epochs; "
                         f"give more than {epochs_done}")
    # The cosine schedule is laid over the new total from here on; the warm-up is long past.
    return dataclasses.replace(saved, train=dataclasses.replace(saved.train, epochs=epochs))

