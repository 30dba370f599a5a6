"""The one training loop: data, model, optimiser, evaluation and the run directory.

It calls the learner's hooks and never names a learner.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cilkit.backbones import create_network
from cilkit.config import ExperimentConfig, config_to_dict, dump_config
from cilkit.config.schema import OptimConfig
from cilkit.config.source import ConfigSource
from cilkit.config.validate import validate_experiment
from cilkit.data import datasets as _datasets  # noqa: F401  (registers the adapters)
from cilkit.data.base import DatasetSplits, create_dataset
from cilkit.data.samplers import create_sampler
from cilkit.data.transforms import BatchTransform, resolve_preset
from cilkit.engine.checkpoint import (
    find_resume_checkpoint,
    latest_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from cilkit.engine.data import Batch, DeviceSplit
from cilkit.engine.distributed import Distributed
from cilkit.engine.evaluate import predict_split, task_metrics
from cilkit.engine.logger import RunLogger, capture_records
from cilkit.engine.optim import ParamGroup, build_optimizer, build_scheduler
from cilkit.engine.progress import Progress
from cilkit.engine.runtime import autocast, autocast_dtype, resolve_device, seed_everything
from cilkit.errors import CheckpointError, CilkitError, RunInterrupted
from cilkit.learners import Learner, StepOutput, TaskContext, create_learner
from cilkit.learners.base import TrainingStage
from cilkit.results.plots import (
    plot_accuracy_curve,
    plot_accuracy_matrix,
    plot_per_class_accuracy,
)
from cilkit.results.run_dir import RunDirectory, summarize
from cilkit.scenarios import ClassIncremental, resolve_class_order
from cilkit.scenarios.long_tail import apply_long_tail


class TrainingError(CilkitError):
    """Training cannot go on (a NaN loss, ...)."""


class _InterruptHandler:
    """First Ctrl-C asks the loop to checkpoint and stop at the next epoch end; a second one
    aborts at once (the last complete checkpoint stays valid)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(
            "\nCtrl-C: stopping after this epoch with a checkpoint (Ctrl-C again to abort now)",
            file=sys.stderr,
            flush=True,
        )

    def __enter__(self) -> _InterruptHandler:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def config_fingerprint(cfg: ExperimentConfig) -> str:
    """Hash of everything in a config that changes results (not progress bars, workers, name)."""
    data = config_to_dict(cfg)
    data.pop("name", None)
    for section, key in (
        ("engine", "progress"),
        ("engine", "tensorboard"),
        ("train", "num_workers"),
    ):
        data[section].pop(key, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


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


class _StepModule(torch.nn.Module):
    """Wraps a learner's training_step as a forward, so DistributedDataParallel syncs gradients."""

    def __init__(self, learner: Learner) -> None:
        super().__init__()
        self.learner = learner

    def forward(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor):
        out = self.learner.training_step(Batch(x, y, index))
        if not isinstance(out, StepOutput):
            out = StepOutput(out)
        return out.loss, out.logits, out.terms


def _step_function(learner: Learner, dist: Distributed, device: torch.device):
    """One training step's forward: plain, or through DDP under torchrun."""
    if dist.world_size == 1:

        def step(batch: Batch) -> StepOutput:
            out = learner.training_step(batch)
            return out if isinstance(out, StepOutput) else StepOutput(out)

        return step
    from torch.nn.parallel import DistributedDataParallel

    ddp = DistributedDataParallel(
        _StepModule(learner),
        device_ids=[device.index] if device.type == "cuda" else None,
        broadcast_buffers=False,
    )

    def ddp_step(batch: Batch) -> StepOutput:
        loss, logits, terms = ddp(batch.x, batch.y, batch.index)
        return StepOutput(loss, terms, logits)

    return ddp_step


@dataclass
class Setup:
    """Everything built from the config before the first task."""

    dataset: DatasetSplits
    train_scenario: ClassIncremental
    test_scenario: ClassIncremental
    train: DeviceSplit
    test: DeviceSplit
    learner: Learner
    device: torch.device

    @property
    def train_counts(self) -> torch.Tensor:
        """Training images of each remapped class."""
        return torch.bincount(
            self.train_scenario.targets, minlength=self.train_scenario.num_classes
        )


class Trainer:
    """Runs one experiment into a run directory.

    Args:
        cfg: the resolved experiment config.
        run_dir: where the run's files go.
        source: the config file (or :class:`ConfigSource`) the run came from, for error messages.
        log: a text stream for tables and messages; "stdout" (the current sys.stdout) or None.
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        run_dir: str | Path,
        source: ConfigSource | str | None = None,
        log: Any = "stdout",
    ) -> None:
        self.cfg = cfg
        self.run = RunDirectory(run_dir)
        self.source = ConfigSource.of(source)
        self.log = log
        self.logger: RunLogger | None = None

    def _print(self, text: str = "") -> None:
        if self.log is not None:
            print(text, file=sys.stdout if self.log == "stdout" else self.log, flush=True)
        if self.logger is not None:
            self.logger.text(text)

    def _warn(self, text: str) -> None:
        """A warning: to stderr (or the given log stream) and to log.txt."""
        line = f"warning: {text}"
        if self.log is not None:
            print(line, file=sys.stderr if self.log == "stdout" else self.log, flush=True)
        if self.logger is not None:
            self.logger.text(line)

    def _on_log_record(self, record: logging.LogRecord) -> None:
        """Records of cilkit's loggers during a run: warnings are shown, everything is logged."""
        if record.levelno >= logging.WARNING:
            self._warn(record.getMessage())
        elif self.logger is not None:
            self.logger.text(record.getMessage())

    # ---- set-up ----------------------------------------------------------------------------------
    def setup(self, dist: Distributed | None = None) -> Setup:
        """Load the data and build the scenario, the network and the learner."""
        cfg = self.cfg
        dist = dist or Distributed()
        seed_everything(cfg.seed, cfg.engine.deterministic)
        if cfg.engine.num_threads:
            torch.set_num_threads(cfg.engine.num_threads)
        device = resolve_device(cfg.engine, dist.local_rank if dist.world_size > 1 else None)
        dist.init(device)
        dataset = create_dataset(cfg.data)
        validate_experiment(cfg, dataset.num_classes, self.source)
        if cfg.scenario.long_tail is not None:
            try:
                lt_train, _ = apply_long_tail(dataset.train, cfg.scenario.long_tail)
            except ValueError as err:
                raise self.source.error("scenario.long_tail", str(err)) from None
            dataset = dataclasses.replace(dataset, train=lt_train)
        sc = cfg.scenario
        order = resolve_class_order(dataset.num_classes, sc.class_order, sc.class_order_seed)
        train_scn = ClassIncremental(dataset.train, sc.increment, sc.initial_increment, order)
        test_scn = ClassIncremental(dataset.test, sc.increment, sc.initial_increment, order)
        transform = BatchTransform(
            dataset.mean,
            dataset.std,
            resolve_preset(dataset.preset, cfg.data.augment),
            channels_last=cfg.engine.channels_last,
        )
        kw = {
            "num_workers": cfg.train.num_workers,
            "on_unreadable": cfg.data.on_unreadable,
            "rank": dist.rank,
            "world_size": dist.world_size,
        }
        train = DeviceSplit(dataset.train, train_scn.targets, transform, device, **kw)
        test = DeviceSplit(dataset.test, test_scn.targets, transform, device, **kw)
        network = create_network(cfg.backbone, dataset.train.image_shape[0])
        if cfg.engine.compile:
            network.backbone.compile()  # in place: parameter names (and checkpoints) unchanged
        learner = create_learner(cfg.learner, network, cfg.memory)
        return Setup(dataset, train_scn, test_scn, train, test, learner, device)

    def to_device(self, learner: Learner, device: torch.device) -> None:
        learner.to(device)
        if self.cfg.engine.channels_last:
            learner.to(memory_format=torch.channels_last)

    # ---- the loop ----------------------------------------------------------------------------------
    def fit(
        self, resume: bool = False, stop_after_task: int | None = None
    ) -> dict[str, Any] | None:
        """Train on every task, evaluating and checkpointing after each.

        Args:
            resume: continue from the run directory's last complete checkpoint.
            stop_after_task: end cleanly after this task id (a later ``resume`` continues).

        Returns:
            The summary, or None when the run stopped early.
        """
        cfg = self.cfg
        dist = Distributed.from_env()
        main_process = dist.rank == 0
        if not main_process:
            self.log = None
        if main_process:
            # The config first, before the data loads: a run killed at any moment is resumable.
            self.run.path.mkdir(parents=True, exist_ok=True)
            if not resume or not self.run.config_path.exists():
                self.run.write_config(dump_config(cfg))
        self.logger = RunLogger(self.run.path, cfg.engine.tensorboard, enabled=main_process)
        try:
            with capture_records(self._on_log_record):
                return self._fit(dist, resume, stop_after_task)
        finally:
            self.logger.close()

    def _fit(
        self, dist: Distributed, resume: bool, stop_after_task: int | None
    ) -> dict[str, Any] | None:
        cfg = self.cfg
        main_process = dist.rank == 0
        s = self.setup(dist)
        amp = autocast_dtype(cfg.engine, s.device)
        gens = {
            "shuffle": torch.Generator().manual_seed(cfg.seed),
            "learner": torch.Generator().manual_seed(cfg.seed + 1),
            "augment": torch.Generator(device=s.device).manual_seed(cfg.seed + 2),
        }
        progress = Progress(cfg.engine.progress, enabled=main_process)
        self._print(
            f"{cfg.name}: {cfg.learner.name} on {cfg.data.name}, {s.train_scenario.num_tasks} tasks "
            f"{list(s.train_scenario.increments)}, {cfg.backbone.name}, device {s.device}"
            + (f", {dist.world_size} processes" if dist.world_size > 1 else "")
        )
        if s.dataset.provenance:
            self._print(f"data: {s.dataset.provenance}")
        self._print(f"run directory: {self.run.path}")
        records: list[dict[str, Any]] = []
        start_task, partial = 0, None
        if resume:
            records, start_task, partial = self._restore(s, gens, dist)
            if start_task or partial:
                where = f"task {start_task}" + (
                    f", epoch {partial['epoch'] + 1}" if partial else ""
                )
                self._print(f"resuming at {where}")
        if records:
            self._print(_table_header())
            for r in records:
                self._print(_table_row(r))
        with _InterruptHandler() as interrupt:
            for t in range(start_task, s.train_scenario.num_tasks):
                record = self._run_task(
                    s, t, gens, amp, progress, partial, records, interrupt, dist
                )
                if len(records) == 1:  # the first row of this run's table
                    self._print(_table_header())
                self._print(_table_row(record))
                last = t == s.train_scenario.num_tasks - 1
                stop = dist.any(interrupt.requested)
                if not last and (stop_after_task == t or stop):
                    self._print(
                        f"\nstopped after task {t}; continue with: cilkit run --resume {self.run.path}"
                    )
                    if stop:
                        raise RunInterrupted(self.run.path, t)
                    return None
        summary = summarize(records)
        summary.update(
            {"learner": cfg.learner.name, "dataset": cfg.data.name, "backbone": cfg.backbone.name}
        )
        if main_process:
            self.run.write_summary(summary)
            self._write_plots(records, summary)
        self._print(_summary_text(summary))
        dist.close()
        return summary

    def _train_task(
        self,
        s: Setup,
        task_id: int,
        indices: torch.Tensor,
        gens: dict[str, torch.Generator],
        amp: torch.dtype | None,
        progress: Progress,
        resumed: dict[str, Any] | None,
        records: list[dict[str, Any]],
        interrupt: _InterruptHandler,
        dist: Distributed,
    ) -> float | None:
        """The task's main training, with mid-task checkpoints and Ctrl-C handling."""
        cfg = self.cfg
        epochs = cfg.train.epochs_for_task(task_id)
        learner = s.learner
        if epochs == 0 or len(indices) == 0:
            return None
        every = cfg.engine.checkpoint_every_epochs

        def on_epoch_end(epoch: int, state: dict[str, Any]) -> None:
            due = every is not None and (epoch + 1) % every == 0
            # Every rank decides together (Ctrl-C reaches the ranks at different moments).
            stop = dist.any(interrupt.requested)
            if epoch + 1 < epochs and (due or stop):
                partial = {"task_id": task_id, "epoch": epoch, **state}
                name = f"task-{task_id:03d}-epoch-{epoch:04d}"
                self._checkpoint(s, gens, records, name, task_id, dist, partial)
                dist.barrier()
                if stop:
                    raise RunInterrupted(self.run.path, task_id, epoch)

        return self._fit_epochs(
            s,
            label=f"task {task_id + 1}/{s.train_scenario.num_tasks}",
            params=learner.parameters_to_optimize(),
            optim=cfg.optim,
            task_id=task_id,
            epochs=epochs,
            indices=indices,
            step=_step_function(learner, dist, s.device),
            gens=gens,
            amp=amp,
            progress=progress,
            dist=dist,
            sampler=create_sampler(cfg.train.sampler),
            before_epoch=lambda epoch: learner.before_epoch(epoch, epochs),
            resumed=resumed,
            on_epoch_end=on_epoch_end,
        )

    def run_stage(
        self,
        s: Setup,
        stage: TrainingStage,
        task_id: int,
        indices: torch.Tensor,
        gens: dict[str, torch.Generator],
        amp: torch.dtype | None,
        progress: Progress,
        dist: Distributed,
    ) -> None:
        """An extra stage a learner asked for (e.g. class-balanced rebalancing)."""
        s.learner.train()
        self._fit_epochs(
            s,
            label=f"task {task_id + 1}: {stage.name}",
            params=stage.parameters,
            optim=stage.optim,
            task_id=task_id,
            epochs=stage.epochs,
            indices=indices,
            step=stage.step,
            gens=gens,
            amp=amp,
            progress=progress,
            dist=dist,
            sampler=stage.sampler,
            before_epoch=stage.before_epoch,
            sync_grads=dist.world_size > 1,
            stage_name=stage.name,
        )
        if stage.finish is not None:
            stage.finish()

    def _fit_epochs(
        self,
        s: Setup,
        *,
        label: str,
        params: list[torch.nn.Parameter | ParamGroup],
        optim: OptimConfig,
        task_id: int,
        epochs: int,
        indices: torch.Tensor,
        step: Callable[[Batch], StepOutput],
        gens: dict[str, torch.Generator],
        amp: torch.dtype | None,
        progress: Progress,
        dist: Distributed,
        sampler: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
        before_epoch: Callable[[int], None] | None = None,
        resumed: dict[str, Any] | None = None,
        on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
        sync_grads: bool = False,
        stage_name: str | None = None,
    ) -> float | None:
        """The one epoch loop: forward via ``step``, backward, clip, step, schedule, log."""
        cfg = self.cfg
        stage_note = f" ({stage_name})" if stage_name else ""
        learner = s.learner
        optimizer = build_optimizer(params, optim, task_id)
        scheduler = build_scheduler(optimizer, optim, task_id, epochs)
        scaler = torch.amp.GradScaler(s.device.type, enabled=amp == torch.float16)
        start_epoch, mean_loss, seconds = 0, None, 0.0
        if resumed is not None:
            optimizer.load_state_dict(_optimizer_state_from_json(resumed["optimizer"]))
            scheduler.load_state_dict(resumed["scheduler"])
            scaler.load_state_dict(resumed["scaler"])
            start_epoch, mean_loss = resumed["epoch"] + 1, resumed["loss"]
            seconds = resumed.get("seconds", 0.0)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        bar = progress.bar(epochs, label, start_epoch)
        started = time.perf_counter()
        learner.train()
        for epoch in range(start_epoch, epochs):
            if before_epoch is not None:
                before_epoch(epoch)
            total = torch.zeros((), device=s.device)
            correct = torch.zeros((), device=s.device)
            first_bad = torch.full((), -1, device=s.device, dtype=torch.long)
            seen = 0
            batches = s.train.train_batches(
                indices, cfg.train.batch_size, gens["shuffle"], gens["augment"], sampler
            )
            for i, batch in enumerate(batches):
                with autocast(s.device, amp):
                    out = step(batch)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(out.loss).backward()
                if sync_grads:
                    dist.average_gradients(params)
                if cfg.train.grad_clip is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                learner.after_step()
                loss = out.loss.detach().float()
                # No host sync per step: remember the first non-finite step on the device.
                first_bad = torch.where(~torch.isfinite(loss) & (first_bad < 0), i, first_bad)
                total += loss * len(batch.y)
                if out.logits is not None:
                    correct += (out.logits.detach().argmax(1) == batch.y).sum()
                seen += len(batch.y)
            scheduler.step()
            bad_step = int(first_bad)
            if bad_step >= 0:
                kept = (
                    latest_checkpoint(self.checkpoint_dir) if self.checkpoint_dir.exists() else None
                )
                raise TrainingError(
                    f"task {task_id}{stage_note}, epoch {epoch}, step {bad_step}: "
                    "the loss is not finite; "
                    "lower optim.lr or set train.grad_clip"
                    + (f" (the last good checkpoint {kept} is kept)" if kept else "")
                )
            mean_loss = total.item() / max(seen, 1)
            train_acc = 100.0 * correct.item() / max(seen, 1)
            bar.update(loss=mean_loss, acc=train_acc)
            self.logger.scalars(
                {f"{label}/loss": mean_loss, f"{label}/train_accuracy": train_acc}, epoch
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
                    },
                )
        bar.close()
        return mean_loss

    def _run_task(
        self,
        s: Setup,
        t: int,
        gens: dict[str, torch.Generator],
        amp: torch.dtype | None,
        progress: Progress,
        partial: dict[str, Any] | None,
        records: list[dict[str, Any]],
        interrupt: _InterruptHandler,
        dist: Distributed,
    ) -> dict[str, Any]:
        """One task: hooks, training, extra stages, evaluation, checkpoint; returns its record."""
        cfg = self.cfg
        main_process = dist.rank == 0
        info = s.train_scenario.task_info(t)
        ctx = TaskContext(info, s.train, gens["learner"], cfg.train.eval_batch_size)
        resumed = partial if partial is not None and partial["task_id"] == t else None
        if resumed is None:
            s.learner.before_task(ctx)
        self.to_device(s.learner, s.device)
        indices = s.learner.train_indices(ctx)
        s.learner.before_training(ctx, indices)
        start = time.perf_counter()
        loss = self._train_task(
            s, t, indices, gens, amp, progress, resumed, records, interrupt, dist
        )
        dist.sync_module(s.learner)
        s.learner.after_task(ctx)
        self.to_device(s.learner, s.device)
        for stage in s.learner.stages(ctx, indices):
            self.run_stage(s, stage, t, indices, gens, amp, progress, dist)
        train_seconds = time.perf_counter() - start + (resumed or {}).get("seconds", 0.0)
        seen = s.test_scenario[: t + 1]
        top1, top5, targets = predict_split(
            s.learner, s.test, seen.indices, cfg.train.eval_batch_size, amp
        )
        record = {
            "task_id": t,
            "num_seen_classes": info.num_seen_classes,
            "num_new_classes": info.num_new_classes,
            **task_metrics(
                top1,
                top5,
                targets,
                seen,
                s.train_counts[: info.num_seen_classes],
                cfg.scenario.many_threshold,
                cfg.scenario.few_threshold,
            ),
            "train_loss": loss,
            "num_train_samples": len(indices),
            "memory_size": len(s.learner.memory) if s.learner.memory is not None else 0,
            "train_seconds": round(train_seconds, 3),
        }
        records.append(record)
        self._checkpoint(s, gens, records, f"task-{t:03d}", task_id=t + 1, dist=dist)
        if main_process:
            self.run.write_metrics(records)
        dist.barrier()
        self.logger.scalars(
            {
                "accuracy/cnn": record["accuracy"],
                "accuracy/nme": record.get("accuracy_nme"),
                "accuracy/old": record["old_accuracy"],
                "accuracy/new": record["new_accuracy"],
            },
            info.num_seen_classes,
        )
        return record

    # ---- checkpoints -------------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.run.path / "checkpoints"

    def _checkpoint(
        self,
        s: Setup,
        gens: dict[str, torch.Generator],
        records: list[dict[str, Any]],
        name: str,
        task_id: int,
        dist: Distributed,
        partial: dict[str, Any] | None = None,
    ) -> None:
        """Write everything needed to continue; keep the last two task checkpoints.

        Every process takes part: under torchrun each rank's generators and buffers (its
        BatchNorm statistics differ inside a task) are gathered, so a resumed run continues
        each rank exactly where it stopped. Rank 0 writes.
        """
        own = {
            "rng": rng_state(gens),
            "buffers": {k: v.detach().cpu() for k, v in s.learner.named_buffers()},
        }
        gathered = dist.gather_object(own) if dist.world_size > 1 else [own]
        if dist.rank != 0:
            return
        state = {
            "config_hash": config_fingerprint(self.cfg),
            "next_task": task_id,
            "records": records,
            "learner": s.learner.state_dict(),
            "rng": own["rng"],
            "partial": partial,
            "world_size": dist.world_size,
            "other_ranks": gathered[1:],
        }
        save_checkpoint(self.checkpoint_dir, name, state)
        keep = {name}
        previous = sorted(p.stem for p in self.checkpoint_dir.glob("task-*.json"))
        keep.update(n for n in previous if "epoch" not in n and n <= name)
        keep = set(sorted(keep)[-2:]) | {name}
        for p in self.checkpoint_dir.glob("task-*"):
            if p.stem not in keep:
                p.unlink(missing_ok=True)

    def _restore(
        self, s: Setup, gens: dict[str, torch.Generator], dist: Distributed
    ) -> tuple[list[dict[str, Any]], int, dict[str, Any] | None]:
        """Load the newest valid checkpoint into the learner and the generators; returns the
        records so far, the next task and the mid-task state (if any)."""
        found = find_resume_checkpoint(self.checkpoint_dir)
        if found is None:
            self._print(
                "no checkpoint yet (the run stopped before its first task finished): "
                "starting from the beginning"
            )
            return [], 0, None
        path, state, notes = found
        for note in notes:
            self._warn(note)
        if state.get("config_hash") != config_fingerprint(self.cfg):
            raise CheckpointError(
                f"{path}: written by a different config than {self.run.config_path}; "
                "resume with the run's own config.yaml"
            )
        try:
            s.learner.load_state_dict(state["learner"])
        except RuntimeError as err:
            first = str(err).strip().splitlines()[0]
            raise CheckpointError(f"{path}: does not fit this learner ({first})") from None
        rank_state = {"rng": state["rng"]}
        others = state.get("other_ranks") or []
        if state.get("world_size", 1) != dist.world_size:
            self._warn(
                f"{path.name} was written by {state.get('world_size', 1)} process(es), this run "
                f"has {dist.world_size}: it continues, but will not equal an uninterrupted run"
            )
        elif dist.rank > 0:
            rank_state = others[dist.rank - 1]
            with torch.no_grad():
                for key, buf in s.learner.named_buffers():
                    stored = rank_state["buffers"].get(key)
                    if stored is not None and stored.shape == buf.shape:
                        buf.copy_(stored)
        set_rng_state(rank_state["rng"], gens)
        records = list(state["records"])
        partial = state.get("partial")
        if partial is not None:
            partial["load_from"] = path
        return records, int(state["next_task"]), partial

    def _write_plots(self, records: list[dict[str, Any]], summary: dict[str, Any]) -> None:
        plots = self.run.plots_dir
        xs = [r["num_seen_classes"] for r in records]
        series = {"CNN top-1": [r["accuracy"] for r in records]}
        if records and records[-1].get("accuracy_nme") is not None:
            series["NME top-1"] = [r["accuracy_nme"] for r in records]
        title = f"{self.cfg.learner.name} on {self.cfg.data.name}"
        plot_accuracy_curve(xs, series, plots / "accuracy.png", title=title)
        plot_accuracy_matrix(
            summary["accuracy_matrix"], plots / "accuracy_matrix.png", title=f"{title} (CNN)"
        )
        last = records[-1]
        if last.get("per_class_recall") is not None:
            plot_per_class_accuracy(
                last["per_class_recall"],
                last["train_class_counts"],
                plots / "per_class_accuracy.png",
                title=f"{title}: per-class accuracy after the last task",
                many_threshold=self.cfg.scenario.many_threshold,
                few_threshold=self.cfg.scenario.few_threshold,
            )
        if summary.get("nme_accuracy_matrix"):
            plot_accuracy_matrix(
                summary["nme_accuracy_matrix"],
                plots / "accuracy_matrix_nme.png",
                title=f"{title} (NME)",
            )


def _fmt(v: float | None, width: int = 6) -> str:
    return f"{v:{width}.2f}" if v is not None else " " * (width - 1) + "-"


def _table_header() -> str:
    return (
        f"{'task':>4} {'classes':>7} {'CNN':>6} {'top-5':>6} {'old':>6} {'new':>6} "
        f"{'NME':>6} {'loss':>7} {'time s':>7}"
    )


def _table_row(r: dict[str, Any]) -> str:
    loss = f"{r['train_loss']:7.3f}" if r["train_loss"] is not None else "      -"
    return (
        f"{r['task_id']:>4} {r['num_seen_classes']:>7} {_fmt(r['accuracy'])} "
        f"{_fmt(r['accuracy_top5'])} {_fmt(r['old_accuracy'])} {_fmt(r['new_accuracy'])} "
        f"{_fmt(r.get('accuracy_nme'))} {loss} {r['train_seconds']:7.1f}"
    )


def _summary_text(s: dict[str, Any]) -> str:
    lines = ["", "summary (accuracies in %):"]
    for prefix, label in (("", "CNN"), ("nme_", "NME")):
        if f"{prefix}avg_incremental_accuracy" not in s:
            continue
        lines.append(
            f"  {label}: average incremental accuracy {s[prefix + 'avg_incremental_accuracy']:.2f}, "
            f"last accuracy {s[prefix + 'last_accuracy']:.2f}, forgetting "
            f"{_fmt(s[prefix + 'forgetting'], 0).strip()}, backward transfer "
            f"{_fmt(s[prefix + 'backward_transfer'], 0).strip()}"
        )
    lines.append(f"  training time {s['train_seconds']:.1f} s")
    return "\n".join(lines)
