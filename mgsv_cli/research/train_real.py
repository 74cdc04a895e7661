"""Training ReAL (spec section 6, seed 003): two stages, trained one after the other.

Stage 1 (``retrieval``) trains the retrieval model with the multi-positive symmetric
InfoNCE; stage 2 (``localisation``) trains Music-DETR with Hungarian matching, L1 + GIoU,
the class cross-entropy and the alignment loss. Each stage has its own AdamW, peak
learning rate, epochs and warm-up + cosine schedule per step; only that stage's weights
get gradients. After every epoch the whole network is scored on val with
:func:`~mgsv_cli.research.evaluation.evaluate_model` (the same metrics as MaDe) and the
stage's weights are kept when they are its best so far: retrieval by the mean of R@1/5/10,
localisation by mIoU. One run folder holds one checkpoint with both stages' weights
(``retrieval.*``, ``localisation.*``), so :func:`~mgsv_cli.models.checkpoint.load_model`
gives one network.

``stage="retrieval"`` or ``"localisation"`` trains one stage; pointed (``out_dir``) at an
existing ReAL run it continues that run, keeping the other stage's weights. A run resumes
from its last finished epoch (``last.safetensors`` + ``state.json``, as for MaDe).

Run folders, the schedule, the log and the result type are the MaDe loop's, from
:mod:`~mgsv_cli.research.runs`.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from mgsv_cli.errors import CheckpointError, UsageError
from mgsv_cli.features.recipe import describe_encoders
from mgsv_cli.models.checkpoint import (
    WEIGHTS_NAME,
    atomic_write_json,
    check_family,
    save_checkpoint,
)
from mgsv_cli.models.variants import VariantConfig, variant_to_dict
from mgsv_cli.research.curves import CurveLog, plot_history
from mgsv_cli.research.runs import (
    Reporter,
    RunLog,
    TrainResult,
    choose_run_dir,
    learning_rate,
    load_resume_point,
    restore_optimizer,
    save_resume_point,
    saved_variant,
)

STAGES = ("retrieval", "localisation")


def stage_score(stage: str, metrics: dict[str, Any]) -> float:
    """Model selection on val per stage: mean R@1/5/10 for retrieval, mIoU (in %) for localisation."""
    if stage == "retrieval":
        return float((metrics["r1"] + metrics["r5"] + metrics["r10"]) / 3)
    return float(metrics["miou"] * 100.0)


# ----------------------------------------------------------------------------- steps


def build_optimizer(module, lr: float, weight_decay: float, device=None):
    """AdamW over one stage's parameters (the fused kernel on CUDA)."""
    import torch

    extra: dict[str, Any] = {"fused": True} if getattr(device, "type", None) == "cuda" else {}
    return torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay, **extra)


def retrieval_loss(model, batch):
    """Multi-positive symmetric InfoNCE of a batch of matched pairs (same-track rows are positives)."""
    from mgsv_cli.models.real_losses import multi_positive_info_nce, same_track_positives

    sim = model.retrieval_similarities(batch.frames, batch.frame_mask, batch.windows, batch.window_mask)
    return multi_positive_info_nce(sim, model.retrieval.log_scale, same_track_positives(batch.track_index))


def localisation_loss(model, batch, recipe):
    """Music-DETR's total loss on a batch of matched pairs."""
    from mgsv_cli.models.real_losses import localisation_loss as detr_loss

    out = model.localisation_outputs(batch.frames, batch.frame_mask, batch.windows, batch.window_mask)
    return detr_loss(out, batch.span, recipe)["total"]


def train_step(model, stage: str, optimizer, batch, recipe, lr: float, dtype) -> float:
    """One AdamW step of ``stage`` on a batch; returns the loss."""
    import torch

    for group in optimizer.param_groups:
        group["lr"] = lr
    with torch.autocast(batch.frames.device.type, dtype=dtype, enabled=dtype != torch.float32):
        loss = retrieval_loss(model, batch) if stage == "retrieval" else localisation_loss(model, batch, recipe)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.stage(stage).parameters(), recipe.grad_clip)
    optimizer.step()
    if stage == "retrieval":
        with torch.no_grad():  # CLIP's bound: a temperature below 0.01 only destabilises
            model.retrieval.log_scale.clamp_(max=math.log(100.0))
    return float(loss.detach())


# ----------------------------------------------------------------------------- run state


@dataclasses.dataclass
class _RunState:
    """Where a ReAL run stands; ``state.json`` after every epoch."""

    stage: str = "retrieval"  # the stage being trained now
    epochs_done: int = 0  # of that stage
    step: int = 0  # of that stage's schedule
    best: dict[str, float] = dataclasses.field(default_factory=dict)  # best val score per stage
    best_epoch: dict[str, int] = dataclasses.field(default_factory=dict)
    stages: list[str] = dataclasses.field(default_factory=lambda: list(STAGES))  # the stages this run trains
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def _save_last(run_dir: Path, model, optimizer, variant: VariantConfig, state: _RunState) -> None:
    save_resume_point(run_dir, model, optimizer, variant, {"family": "real", **dataclasses.asdict(state)})


def _restore_last(run_dir: Path, model) -> tuple[_RunState, dict]:
    """Weights and RNG from ``last.safetensors``; returns the state and the saved optimizer tensors."""
    try:
        saved = json.loads((run_dir / "state.json").read_text())
        saved.pop("family", None)
        state = _RunState(**saved)
    except (OSError, ValueError, TypeError):
        raise CheckpointError(f"cannot resume {run_dir}: state.json is missing or not a ReAL run's") from None
    return state, load_resume_point(run_dir, model)


# ----------------------------------------------------------------------------- the run folder


def _continued_variant(saved: VariantConfig, asked: dict[str, Any], run_dir: Path,
                       resuming: bool = False) -> VariantConfig:
    """The recipe to continue ``run_dir`` with: its own, with --epochs/--lr/--batch-size/... applied."""
    model = asked.get("model")
    if model is not None and model != saved.model:
        raise UsageError(f"--config asks for another model than the run in {run_dir} was trained with: "
                         "drop --config, or start a new run with another --out")
    changes = {k: asked[k] for k in ("epochs", "lr", "batch_size", "precision", "seed") if asked.get(k) is not None}
    if resuming:  # as for MaDe: a resumed run keeps its recipe, only --epochs may grow it
        for key, value in changes.items():
            if key != "epochs" and value != getattr(saved.train, key):
                flag = "--" + key.replace("_", "-")
                raise UsageError(f"{flag} {value} conflicts with the run in {run_dir}: a resumed run keeps its "
                                 f"recipe; drop {flag}, or start a new run with another --out")
    return dataclasses.replace(saved, train=dataclasses.replace(saved.train, **changes))


def _open_run(out_dir: Path | None, variant: VariantConfig, resume: bool, stage: str,
              asked: dict[str, Any] | None) -> tuple[Path, VariantConfig, str]:
    """``(run folder, variant, how)`` with ``how`` one of ``new``, ``resume``, ``continue``.

    ``asked`` None: a library call, whose ``variant`` recipe is used as given.
    """
    if resume:
        run_dir = choose_run_dir(out_dir, variant, True)
        saved = saved_variant(run_dir)
        check_family(run_dir, saved, "real")
        return run_dir, _continued_variant(saved, asked or {}, run_dir, resuming=True), "resume"
    if stage != "both" and out_dir is not None and (out_dir / WEIGHTS_NAME).is_file():
        saved = saved_variant(out_dir)
        check_family(out_dir, saved, "real")
        if variant.family == "real" and (asked is None or asked.get("model") is not None):
            # a ReAL config chosen by the caller: its recipe, on the run's network
            if variant.model != saved.model:
                raise UsageError(f"the run in {out_dir} has another ReAL network than '{variant.name}': "
                                 "drop --config, or start a new run with another --out")
            return out_dir, dataclasses.replace(saved, train=variant.train), "continue"
        return out_dir, _continued_variant(saved, asked or {}, out_dir), "continue"
    return choose_run_dir(out_dir, variant, False), variant, "new"


def _saved_stage_metrics(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "metrics.json"
    try:
        return dict(json.loads(path.read_text()).get("stages", {})) if path.is_file() else {}
    except (OSError, ValueError, AttributeError):
        return {}


# ----------------------------------------------------------------------------- the loop


def train_real(data_root, variant: VariantConfig, out_dir=None, device: str = "auto", resume: bool = False,
               reporter=None, asked: dict[str, Any] | None = None, stage: str = "both"):
    """Train (or resume, or continue one stage of) a ReAL run; returns ``TrainResult``.

    ``stage``: ``both`` (retrieval, then localisation), ``retrieval`` or ``localisation``.
    Epochs and peak learning rates are the recipe's per stage (``RealTrainConfig``).
    """
    import torch

    from mgsv_cli.device import compute_dtype, out_of_memory_hint, resolve_device
    from mgsv_cli.models.checkpoint import build_network, load_model
    from mgsv_cli.research.dataset import load_split, place_split

    if stage not in ("both",) + STAGES:
        raise UsageError(f"--stage {stage}: expected both, retrieval or localisation")
    reporter = reporter or Reporter()
    torch_device = resolve_device(device)
    run_dir, variant, how = _open_run(Path(out_dir).expanduser() if out_dir else None, variant, resume,
                                      stage, asked)
    recipe = variant.train
    torch.manual_seed(recipe.seed)
    model = build_network(variant).to(torch_device)
    with torch.no_grad():
        model.retrieval.log_scale.fill_(math.log(1.0 / recipe.temperature_init))
    state, last = _RunState(stages=list(STAGES) if stage == "both" else [stage], stage=STAGES[0] if stage == "both"
                            else stage), None
    if how == "resume":
        state, last = _restore_last(run_dir, model)
        final = state.stages[-1]
        if state.stage == final and state.epochs_done >= recipe.stage_epochs(final):
            raise UsageError(f"the run in {run_dir} already finished its {state.epochs_done} {final} epochs: "
                             f"pass --epochs N (more than {state.epochs_done}) to train that stage further")
    elif how == "continue":
        model.load_state_dict(load_model(run_dir, device=torch_device, expect_family="real")[0].state_dict())

    train_split, val_split = load_split(data_root, "train"), load_split(data_root, "val")
    steps_per_epoch = train_split.n // recipe.batch_size
    if steps_per_epoch < 1:
        raise UsageError(f"batch size {recipe.batch_size} is larger than the training split ({train_split.n} videos)")
    dtype = compute_dtype(torch_device, recipe.precision)
    with out_of_memory_hint("loading the features", "--batch-size", recipe.batch_size, torch_device):
        train_split = place_split(train_split, torch_device)
        val_split = place_split(val_split, torch_device)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "config.json", variant_to_dict(variant))
    log = RunLog(run_dir / "train.log")
    stage_metrics = _saved_stage_metrics(run_dir) if how != "new" else {}
    context = _Context(model, variant, run_dir, torch_device, dtype, reporter, log, stage_metrics, CurveLog(run_dir))

    try:
        for name in state.stages[state.stages.index(state.stage):]:
            if state.stage != name:
                state.stage, state.epochs_done, state.step = name, 0, 0
            optimizer = build_optimizer(model.stage(name), recipe.stage_lr(name), recipe.weight_decay, torch_device)
            if last is not None:
                restore_optimizer(model, optimizer, last, state.step)
                last = None
            info = {"run_dir": str(run_dir), "variant": f"{variant.name} ({name})", "device": str(torch_device),
                    "dtype": str(dtype).replace("torch.", ""), "params": model.parameter_counts(),
                    "n_train": train_split.n, "n_val": val_split.n, "steps_per_epoch": steps_per_epoch,
                    "epochs": recipe.stage_epochs(name), "start_epoch": state.epochs_done, "stage": name,
                    "encoders": describe_encoders(variant.model.video_dim, variant.model.music_dim)}
            log.write(f"{'resumed' if how == 'resume' else 'started'} {json.dumps(info)}")
            reporter.start(info)
            _train_stage(context, name, optimizer, state, train_split, val_split, steps_per_epoch)
            _keep_best_of_stage(model, run_dir, name)
    except KeyboardInterrupt:
        log.write(f"interrupted in stage {state.stage} after {state.epochs_done} finished epoch(s)")
        reporter.interrupted(run_dir, state.epochs_done)
        raise
    finally:
        context.curves.close()

    trained = [r for r in state.history if r["stage"] == state.stages[-1]]
    best = max(trained, key=lambda r: r["score"], default={})
    return TrainResult(run_dir=run_dir, best_metrics=best, history=state.history)


@dataclasses.dataclass
class _Context:
    model: Any
    variant: VariantConfig
    run_dir: Path
    device: Any
    dtype: Any
    reporter: Any
    log: Any
    stage_metrics: dict[str, Any]
    curves: Any = None  # a CurveLog: each stage's tags under "<stage>/" (each stage has its own steps)


def _train_stage(ctx: _Context, stage: str, optimizer, state: _RunState, train_split, val_split,
                 steps_per_epoch: int) -> None:
    """Epochs of one stage from ``state.epochs_done`` on; validates and saves after each."""
    from mgsv_cli.device import out_of_memory_hint

    recipe = ctx.variant.train
    n_epochs = recipe.stage_epochs(stage)
    total_steps = steps_per_epoch * n_epochs
    if ctx.curves is not None:
        ctx.curves.prefix = f"{stage}/"
    for epoch in range(state.epochs_done, n_epochs):
        ctx.reporter.start_epoch(epoch, n_epochs, steps_per_epoch)
        with out_of_memory_hint("training", "--batch-size", recipe.batch_size, ctx.device):
            train_loss = _run_epoch(ctx, stage, optimizer, state, train_split, epoch, total_steps)
            lr = learning_rate(max(0, state.step - 1), total_steps, recipe.stage_lr(stage), recipe.warmup_fraction)
            record = _validate_and_save(ctx, stage, optimizer, state, val_split, train_loss, lr)
        ctx.log.write(json.dumps(record))
        ctx.reporter.end_epoch(epoch, train_loss, {k: v for k, v in record.items() if k not in ("epoch", "best")},
                               record["best"])
    history = [r for r in state.history if r["stage"] == stage]
    if history:
        plot_history(history, ctx.run_dir / f"curves-{stage}.png", f"{ctx.variant.name} ({stage}): {ctx.run_dir.name}")


def _run_epoch(ctx: _Context, stage: str, optimizer, state: _RunState, split, epoch: int, total_steps: int) -> float:
    """One shuffled pass over the training split for ``stage``; returns the mean loss."""
    recipe = ctx.variant.train
    ctx.model.train()
    losses = []
    # each stage draws its own batch order: stage 2 is not stage 1's epochs replayed
    seed = recipe.seed + epoch + (0 if stage == "retrieval" else 100_003)
    for batch in split.batches(recipe.batch_size, shuffle=True, seed=seed, drop_last=True):
        lr = learning_rate(state.step, total_steps, recipe.stage_lr(stage), recipe.warmup_fraction)
        loss = train_step(ctx.model, stage, optimizer, batch.to(ctx.device, non_blocking=True), recipe, lr, ctx.dtype)
        state.step += 1
        losses.append(loss)
        ctx.reporter.step(loss, lr)
        if ctx.curves is not None:
            ctx.curves.step(state.step, {"loss": loss}, lr)
    return float(sum(losses) / max(1, len(losses)))


def _validate_and_save(ctx: _Context, stage: str, optimizer, state: _RunState, val_split, train_loss: float,
                       lr: float | None = None) -> dict:
    """Score the network on val; save it as the run's checkpoint when this stage improved."""
    from mgsv_cli.research.curves import learned_scalars
    from mgsv_cli.research.evaluation import evaluate_model

    recipe = ctx.variant.train
    metrics = evaluate_model(ctx.model, val_split, ctx.device, batch_size=recipe.eval_batch_size, dtype=ctx.dtype)
    score = stage_score(stage, metrics)
    is_best = score > state.best.get(stage, float("-inf"))
    state.epochs_done += 1
    record = {"stage": stage, "epoch": state.epochs_done, "train_loss": train_loss, "score": score, **metrics}
    record.update(lr=lr, learned=learned_scalars(ctx.model))
    state.history.append(record)
    if ctx.curves is not None:
        ctx.curves.epoch(state.step, record, record["learned"])
    if is_best:
        state.best[stage], state.best_epoch[stage] = score, state.epochs_done
        ctx.stage_metrics[stage] = {"epoch": state.epochs_done, "score": score}
        save_checkpoint(ctx.run_dir, ctx.model, ctx.variant,
                        {"epoch": state.epochs_done, "stage": stage, "score": score, "val": metrics,
                         "params": ctx.model.parameter_counts(), "stages": dict(ctx.stage_metrics)})
    _save_last(ctx.run_dir, ctx.model, optimizer, ctx.variant, state)
    return {**record, "best": is_best}


def _keep_best_of_stage(model, run_dir: Path, stage: str) -> None:
    """Put the stage's best-on-val weights (the saved checkpoint's) back into ``model``."""
    from safetensors.torch import load_file

    prefix = f"{stage}."
    saved = {k: v for k, v in load_file(str(run_dir / WEIGHTS_NAME)).items() if k.startswith(prefix)}
    model.load_state_dict(saved, strict=False)
