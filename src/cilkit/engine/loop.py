"""The one epoch loop, for a task's main training and for every stage alike: batches, AMP,
backward, gradient averaging under torchrun, clipping, the optimiser step, the schedule,
NaN detection without a host sync per step, named loss terms to the log, and the snapshot a
mid-phase checkpoint needs."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cilkit.config.schema import OptimConfig
from cilkit.contract import Batch, Parameters, Sampler, StepOutput, TrainingStage
from cilkit.engine.checkpoint import latest_checkpoint
from cilkit.engine.optim import build_optimizer, build_scheduler
from cilkit.engine.runtime import autocast
from cilkit.engine.state import RunState
from cilkit.errors import TrainingError

PHASE_ORDER = {"before_training": 0, "train": 1, "after_training": 2, "after_task": 3}
"""The order of a task's training phases; ``after_task`` runs after the learner's hook."""


@dataclass(frozen=True)
class Phase:
    """Where in a task a loop runs: the main training, or stage ``index`` of point ``when``."""

    task_id: int
    when: str = "train"
    index: int = 0
    name: str = "train"

    @property
    def key(self) -> str:
        return "train" if self.when == "train" else f"{self.when}/{self.index}"

    @property
    def order(self) -> tuple[int, int]:
        return PHASE_ORDER[self.when], self.index

    @classmethod
    def from_key(cls, task_id: int, key: str) -> Phase:
        if key == "train":
            return cls(task_id)
        when, index = key.split("/")
        return cls(task_id, when, int(index))


@dataclass
class Loop:
    """One training phase for :func:`run_loop`.

    Attributes:
        phase: which phase of which task.
        label: progress-bar and log label.
        params: what the optimiser updates (parameters and parameter groups).
        optim: optimiser and schedule.
        epochs: number of epochs.
        indices: training-split positions to draw batches from.
        step: a batch's loss.
        sampler: epoch sampler (None = shuffle).
        before_epoch: called with the epoch before each epoch.
        transform: the learner's device-side batch transform (main training).
        raw: also hand the un-augmented images to ``step``.
        views: augmented views per image.
        state: a stage's own module, saved with mid-phase checkpoints.
        augment: False trains on the images as evaluation sees them (no augmentation).
        after_step: called after every optimiser step.
        features: a frozen module whose cached output on each batch's images goes to
            ``batch.extra["features"]`` (un-augmented stages, :class:`TrainingStage`).
    """

    phase: Phase
    label: str
    params: Parameters
    optim: OptimConfig
    epochs: int
    indices: torch.Tensor
    step: Callable[[Batch], StepOutput]
    sampler: Sampler | None = None
    before_epoch: Callable[[int], None] | None = None
    transform: Callable[[Batch, torch.Generator], Batch] | None = None
    raw: bool = False
    views: int = 1
    state: nn.Module | None = None
    after_step: Callable[[], None] | None = None
    augment: bool = True
    features: nn.Module | None = None


def _optimizer_state_to_json(state: dict[str, Any]) -> dict[str, Any]:
    return {
        "state": {str(k): v for k, v in state["state"].items()},
        "param_groups": state["param_groups"],
    }


def _optimizer_state_from_json(state: dict[str, Any]) -> dict[str, Any]:
    return {
        "state": {int(k): v for k, v in state["state"].items()},
        "param_groups": state["param_groups"],
    }


def _stage_features(run: RunState, module: nn.Module, index: torch.Tensor) -> torch.Tensor:
    """``module``'s features of the training images at ``index``, from the run's stage cache
    (computed once per image while the module's values hold; see ``TrainingStage.features``)."""
    if any(p.requires_grad for p in module.parameters()):
        raise TrainingError("a stage's features module has trainable parameters; freeze it")
    was_training = module.training
    module.eval()  # learner.train() reached it if it is part of the learner
    try:
        with torch.no_grad():
            return run.stage_features.get(
                run.parts.train, module, module, index, run.cfg.train.eval_batch_size, amp=run.amp
            )
    finally:
        module.train(was_training)


def run_loop(
    run: RunState,
    loop: Loop,
    resumed: dict[str, Any] | None = None,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
) -> float | None:
    """Train ``loop.epochs`` epochs (from the epoch after ``resumed``'s); returns the last
    epoch's mean loss.

    Args:
        run: the run's state.
        loop: the phase to train.
        resumed: the mid-phase checkpoint state to continue from (optimiser, schedule, epoch).
        on_epoch_end: called after each epoch with the epoch and what a checkpoint of the phase
            needs (the engine's checkpoint policy decides whether to write one).
    """
    cfg, learner, device, dist = run.cfg, run.learner, run.device, run.dist
    lr_multiplier = cfg.train.lr_multiplier()  # every phase steps on train.batch_size
    optimizer = build_optimizer(loop.params, loop.optim, loop.phase.task_id, lr_multiplier)
    scheduler = build_scheduler(optimizer, loop.optim, loop.phase.task_id, loop.epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=run.amp == torch.float16)
    start_epoch, mean_loss, seconds = 0, None, 0.0
    if resumed is not None:
        try:
            optimizer.load_state_dict(_optimizer_state_from_json(resumed["optimizer"]))
        except ValueError as err:
            raise TrainingError(
                f"task {loop.phase.task_id}, {loop.label}: the checkpoint's optimiser state does "
                f"not fit the parameters this phase trains ({err})"
            ) from None
        scheduler.load_state_dict(resumed["scheduler"])
        scaler.load_state_dict(resumed["scaler"])
        if loop.state is not None and resumed.get("stage_state") is not None:
            loop.state.load_state_dict(resumed["stage_state"])
        start_epoch, mean_loss = resumed["epoch"] + 1, resumed["loss"]
        seconds = resumed.get("seconds", 0.0)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    bar = run.progress.bar(loop.epochs, loop.label, start_epoch)
    started = time.perf_counter()
    learner.train()
    augment = run.generators["augment"]
    for epoch in range(start_epoch, loop.epochs):
        if loop.before_epoch is not None:
            loop.before_epoch(epoch)
        total = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        terms: dict[str, torch.Tensor] = {}
        first_bad = torch.full((), -1, device=device, dtype=torch.long)
        seen = 0
        batches = run.parts.train.train_batches(
            loop.indices,
            cfg.train.batch_size,
            run.generators["shuffle"],
            augment,
            loop.sampler,
            raw=loop.raw,
            views=loop.views,
            augment=loop.augment,
        )
        for i, batch in enumerate(batches):
            if loop.features is not None:
                batch.extra["features"] = _stage_features(run, loop.features, batch.index)
            if loop.transform is not None:
                batch = loop.transform(batch, augment)
            with autocast(device, run.amp):
                out = loop.step(batch)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(out.loss).backward()
            dist.average_gradients(params)
            if cfg.train.grad_clip is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            if loop.after_step is not None:
                loop.after_step()
            n = len(batch.y)
            loss = out.loss.detach().float()
            # No host sync per step: remember the first non-finite step on the device.
            first_bad = torch.where(~torch.isfinite(loss) & (first_bad < 0), i, first_bad)
            total += loss * n
            for name, value in out.terms.items():
                terms[name] = terms.get(name, 0.0) + value.detach().float() * n
            if out.logits is not None:
                correct += (out.logits.detach().argmax(1) == batch.y).sum()
            seen += n
        lr = optimizer.param_groups[0]["lr"]  # this epoch's, before the schedule moves on
        scheduler.step()
        bad_step = int(first_bad)
        if bad_step >= 0:
            where = "" if loop.phase.when == "train" else f" ({loop.phase.name})"
            kept = latest_checkpoint(run.run.path / "checkpoints")
            raise TrainingError(
                f"task {loop.phase.task_id}{where}, epoch {epoch}, step {bad_step}: the loss is "
                "not finite; lower optim.lr or set train.grad_clip"
                + (f" (the last good checkpoint {kept} is kept)" if kept else "")
            )
        mean_loss = total.item() / max(seen, 1)
        train_acc = 100.0 * correct.item() / max(seen, 1)
        means = {name: float(v) / max(seen, 1) for name, v in terms.items()}
        bar.update(loss=mean_loss, acc=train_acc)
        run.logger.scalars(
            {
                f"{loop.label}/loss": mean_loss,
                f"{loop.label}/train_accuracy": train_acc,
                **{f"{loop.label}/{name}": v for name, v in means.items()},
            },
            epoch,
        )
        run.logger.epoch(
            {
                "task_id": loop.phase.task_id,
                "num_tasks": run.num_tasks,
                "phase": loop.phase.key,
                "label": loop.label,
                "epoch": epoch + 1,
                "epochs": loop.epochs,
                "loss": mean_loss,
                "train_accuracy": train_acc,
                "terms": means,
                "lr": lr,
                "seconds": round(seconds + time.perf_counter() - started, 3),
            }
        )
        detail = ", ".join(f"{name} {v:.4f}" for name, v in means.items())
        run.logger.text(
            f"{loop.label} epoch {epoch + 1}/{loop.epochs}: loss {mean_loss:.4f}"
            + (f" ({detail})" if detail else "")
            + f", train accuracy {train_acc:.2f}"
        )
        if on_epoch_end is not None:
            on_epoch_end(
                epoch,
                {
                    "loss": mean_loss,
                    "seconds": seconds + time.perf_counter() - started,
                    "optimizer": _optimizer_state_to_json(optimizer.state_dict()),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "stage_state": None if loop.state is None else loop.state.state_dict(),
                },
            )
    bar.close()
    return mean_loss


def run_stage(
    run: RunState,
    stage: TrainingStage,
    phase: Phase,
    indices: torch.Tensor,
    resumed: dict[str, Any] | None = None,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
) -> float | None:
    """Train one :class:`~cilkit.contract.TrainingStage`: ``start`` (fresh stages only), its
    epochs on its own data with its own optimiser, the processes' states shared, ``finish``.

    Args:
        run: the run's state.
        stage: the stage.
        phase: where in which task it runs.
        indices: the task's training positions (used when the stage names none).
        resumed: the mid-stage checkpoint state to continue from.
        on_epoch_end: the checkpoint policy's callback.
    """
    if resumed is None and stage.start is not None:
        stage.start()
    if stage.state is not None:
        stage.state.to(run.device)
    loop = Loop(
        phase=phase,
        label=f"task {phase.task_id + 1}: {stage.name}",
        params=stage.parameters,
        optim=stage.optim,
        epochs=stage.epochs,
        indices=indices if stage.indices is None else stage.indices,
        step=stage.step,
        sampler=stage.sampler,
        before_epoch=stage.before_epoch,
        state=stage.state,
        after_step=run.learner.after_step,
        augment=stage.augment,
        features=stage.features,
    )
    loss = run_loop(run, loop, resumed, on_epoch_end)
    run.dist.sync_module(run.learner)
    if stage.state is not None:  # a stage's own model (its state) is shared too
        run.dist.sync_module(stage.state)
    if stage.finish is not None:
        stage.finish()
    return loss
