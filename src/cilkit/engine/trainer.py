"""The task loop: for each task, the learner's hooks, its main training and stages, evaluation,
the checkpoint and the printed row. It never names a learner.

The parts a newcomer looks for live beside it: building a run (``build.py``), the epoch loop
(``loop.py``), checkpoint content and resuming (``checkpointing.py``), Ctrl-C
(``interrupts.py``), the table, summary and plots (``report.py``).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

from cilkit.config import ExperimentConfig, dump_config
from cilkit.config.source import ConfigSource
from cilkit.contract import StageTime, TaskContext, TrainingStage, task_generator
from cilkit.data.samplers import create_sampler
from cilkit.engine.build import RunParts, build_run, to_device
from cilkit.engine.checkpointing import config_fingerprint, restore, write_checkpoint
from cilkit.engine.distributed import Distributed
from cilkit.engine.evaluate import predict_seen, task_metrics
from cilkit.engine.interrupts import InterruptHandler
from cilkit.engine.logger import RunLogger, capture_records
from cilkit.engine.loop import PHASE_ORDER, Loop, Phase, run_loop, run_stage
from cilkit.engine.progress import Progress
from cilkit.engine.report import summary_text, table_header, table_row, write_plots
from cilkit.engine.runtime import autocast_dtype
from cilkit.engine.state import RunState
from cilkit.errors import RunInterrupted, TrainingError
from cilkit.results.run_dir import RunDirectory, summarize
from cilkit.results.status import one_line, write_end, write_running

__all__ = ["RunInterrupted", "Trainer", "TrainingError", "config_fingerprint"]

_STAGE_POINTS: tuple[StageTime, ...] = ("before_training", "after_training", "after_task")


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

    # ---- output ----------------------------------------------------------------------------------
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

    def setup(self, dist: Distributed | None = None) -> RunParts:
        """Load the data and build the scenario, the network and the learner."""
        return build_run(self.cfg, self.source, dist)

    # ---- the run ---------------------------------------------------------------------------------
    def fit(
        self, resume: bool = False, stop_after_task: int | None = None
    ) -> dict[str, Any] | None:
        """Train on every task, evaluating and checkpointing after each.

        Args:
            resume: continue from the run directory's newest valid checkpoint.
            stop_after_task: end cleanly after this task id (a later ``resume`` continues).

        Returns:
            The summary, or None when the run stopped early.
        """
        cfg = self.cfg
        dist = Distributed.from_env()
        if dist.rank != 0:
            self.log = None
        else:
            # The config first, before the data loads: a run killed at any moment is resumable.
            self.run.path.mkdir(parents=True, exist_ok=True)
            if not resume or not self.run.config_path.exists():
                self.run.write_config(dump_config(cfg))
            started = write_running(self.run.path)["started"]  # status.json: how the run ends
        self.logger = RunLogger(self.run.path, cfg.engine.tensorboard, enabled=dist.rank == 0)
        try:
            with capture_records(self._on_log_record), InterruptHandler() as interrupt:
                summary = self._fit(dist, interrupt, resume, stop_after_task)
        except BaseException as err:
            if dist.rank == 0:
                stopped = isinstance(err, (RunInterrupted, KeyboardInterrupt))
                with contextlib.suppress(OSError):  # never hide the error itself
                    write_end(
                        self.run.path,
                        "interrupted" if stopped else "failed",
                        one_line(err),
                        started,
                    )
            raise
        finally:
            self.logger.close()
            # Every way out (finished, --stop-after-task, an error) leaves the process group:
            # a process that exits inside one aborts in gloo's threads ("terminate called
            # without an active exception") and torchrun reports the run as failed.
            dist.close()
        if dist.rank == 0:
            stopped = f"stopped after task {stop_after_task}" if summary is None else None
            write_end(self.run.path, "interrupted" if stopped else "finished", stopped, started)
        return summary

    def _fit(
        self,
        dist: Distributed,
        interrupt: InterruptHandler,
        resume: bool,
        stop_after_task: int | None,
    ) -> dict[str, Any] | None:
        cfg = self.cfg
        parts = self.setup(dist)
        run = RunState(
            cfg=cfg,
            run=self.run,
            parts=parts,
            dist=dist,
            amp=autocast_dtype(cfg.engine, parts.device),
            generators={
                "shuffle": torch.Generator().manual_seed(cfg.seed),
                "augment": torch.Generator(device=parts.device).manual_seed(cfg.seed + 2),
            },
            progress=Progress(cfg.engine.progress, enabled=dist.rank == 0),
            logger=self.logger,
            interrupt=interrupt,
            say=self._print,
            warn=self._warn,
        )
        scenario = parts.train_scenario
        self._print(
            f"{cfg.name}: {cfg.learner.name} on {cfg.data.name}, {scenario.num_tasks} tasks "
            f"{list(scenario.increments)}, {cfg.backbone.name}, device {parts.device}"
            + (f", {dist.world_size} processes" if dist.world_size > 1 else "")
        )
        if parts.dataset.provenance:
            self._print(f"data: {parts.dataset.provenance}")
        weights = _weights_provenance(parts)
        if weights:
            self._print("backbone: " + ", ".join(f"{k} {v}" for k, v in weights.items() if v))
        self._print(f"run directory: {self.run.path}")
        start_task, partial = restore(run) if resume else (0, None)
        if start_task or partial:
            where = f"task {start_task}" + (
                f", {partial['phase']} epoch {partial['epoch'] + 1}" if partial else ""
            )
            self._print(f"resuming at {where}")
        if run.records:
            self._print(table_header(run.records[0]))
            for r in run.records:
                self._print(table_row(r))
        for t in range(start_task, run.num_tasks):
            resumed = partial if partial is not None and partial["task_id"] == t else None
            record = self._run_task(run, t, resumed)
            if len(run.records) == 1:  # the first row of this run's table
                self._print(table_header(record))
            self._print(table_row(record))
            last = t == run.num_tasks - 1
            stop = dist.any(interrupt.requested)
            if not last and (stop_after_task == t or stop):
                self._print(
                    f"\nstopped after task {t}; continue with: cilkit run --resume {self.run.path}"
                )
                if stop:
                    raise RunInterrupted(self.run.path, t)
                return None
        summary = summarize(run.records)
        summary.update(
            {"learner": cfg.learner.name, "dataset": cfg.data.name, "backbone": cfg.backbone.name}
        )
        summary.update({f"backbone_{k}": v for k, v in _weights_provenance(run.parts).items() if v})
        manifest = run.parts.dataset.extra.get("manifest_sha256")
        if manifest:
            summary["data_manifest_sha256"] = manifest
        if run.main_process:
            self.run.write_summary(summary)
            write_plots(self.run, cfg, run.records, summary)
        self._print(summary_text(summary))
        return summary

    # ---- one task --------------------------------------------------------------------------------
    def _run_task(self, run: RunState, t: int, resumed: dict[str, Any] | None) -> dict[str, Any]:
        """One task: hooks, main training, stages, evaluation, checkpoint; returns its record.

        A task resumed from a mid-task checkpoint skips ``before_task`` and every phase before
        the one it stopped in, and ``after_task`` if it stopped in a stage after it.
        """
        cfg, learner = self.cfg, run.learner
        info = run.parts.train_scenario.task_info(t)
        ctx = TaskContext(
            info,
            run.parts.train,
            task_generator(cfg.seed, t),
            cfg.train.eval_batch_size,
            amp=run.amp,
        )
        resume_at = Phase.from_key(t, resumed["phase"]).order if resumed else None
        if resumed is None:
            learner.before_task(ctx)
        to_device(learner, run.device, cfg.engine.channels_last)
        ctx.indices = learner.train_indices(ctx)
        if resumed is not None:
            # The task's data as it was at its start: hooks that ran before the checkpoint
            # (after_task's memory update) may have changed what train_indices returns now.
            ctx.indices = resumed["indices"]
        learner.before_training(ctx, ctx.indices)
        task = {
            "indices": ctx.indices,
            "started": time.perf_counter(),
            "before": (resumed or {}).get("task_seconds", 0.0),
            "train_loss": (resumed or {}).get("train_loss"),
        }

        def pending(phase: Phase) -> dict[str, Any] | None | bool:
            """False: done before the checkpoint; the checkpoint's state: resume here; None."""
            if resume_at is None or phase.order > resume_at:
                return None
            return resumed if phase.order == resume_at else False

        for when in ("before_training", "train", "after_training", "after_task"):
            if when == "after_task":
                if resume_at is None or resume_at < (PHASE_ORDER["after_task"], 0):
                    learner.after_task(ctx)
                    to_device(learner, run.device, cfg.engine.channels_last)
            if when == "train":
                phase = Phase(t)
                state = pending(phase)
                if state is not False:
                    task["train_loss"] = self._train(run, ctx, phase, state, task)
                continue
            for k, stage in enumerate(learner.stages(ctx, when)):
                phase = Phase(t, when, k, stage.name)
                state = pending(phase)
                if state is not False:
                    self._run_stage(run, ctx, phase, stage, state, task)
        seconds = time.perf_counter() - task["started"] + task["before"]
        record = self._evaluate(run, ctx, task["train_loss"], seconds)
        run.records.append(record)
        write_checkpoint(run, f"task-{t:03d}", next_task=t + 1)
        if run.main_process:
            self.run.write_metrics(run.records)
        run.dist.barrier()
        return record

    def _checkpoint_policy(self, run: RunState, phase: Phase, epochs: int, task: dict[str, Any]):
        """Mid-phase checkpoints: every ``engine.checkpoint_every_epochs`` and on Ctrl-C."""
        every = self.cfg.engine.checkpoint_every_epochs
        t = phase.task_id

        def on_epoch_end(epoch: int, snapshot: dict[str, Any]) -> None:
            due = every is not None and (epoch + 1) % every == 0
            # Every rank decides together (Ctrl-C reaches the ranks at different moments).
            stop = run.dist.any(run.interrupt.requested)
            if epoch + 1 < epochs and (due or stop):
                elapsed = time.perf_counter() - task["started"] + task["before"]
                partial = {
                    "task_id": t,
                    "phase": phase.key,
                    "epoch": epoch,
                    "train_loss": task["train_loss"],
                    "task_seconds": elapsed,
                    "indices": task["indices"],
                    **snapshot,
                }
                name = f"task-{t:03d}-{_phase_name(phase)}-epoch-{epoch:04d}"
                write_checkpoint(run, name, next_task=t, partial=partial)
                run.dist.barrier()
                if stop:
                    raise RunInterrupted(self.run.path, t, epoch)

        return on_epoch_end

    def _train(
        self,
        run: RunState,
        ctx: TaskContext,
        phase: Phase,
        resumed: dict[str, Any] | None,
        task: dict[str, Any],
    ) -> float | None:
        """The task's main training."""
        cfg, learner = self.cfg, run.learner
        epochs = cfg.train.epochs_for_task(phase.task_id)
        if epochs == 0 or len(ctx.indices) == 0:
            return None
        loop = Loop(
            phase=phase,
            label=f"task {phase.task_id + 1}/{run.num_tasks}",
            params=learner.configure_training(ctx),
            optim=cfg.optim,
            epochs=epochs,
            indices=ctx.indices,
            step=learner.training_step,
            sampler=create_sampler(cfg.train.sampler),
            before_epoch=lambda epoch: learner.before_epoch(epoch, epochs),
            transform=learner.transform_batch,
            raw=learner.needs_raw_batch,
            views=learner.num_views,
            after_step=learner.after_step,
        )
        policy = self._checkpoint_policy(run, phase, epochs, task)
        loss = run_loop(run, loop, resumed, policy)
        run.dist.sync_module(learner)
        return loss

    def _run_stage(
        self,
        run: RunState,
        ctx: TaskContext,
        phase: Phase,
        stage: TrainingStage,
        resumed: dict[str, Any] | None,
        task: dict[str, Any],
    ) -> None:
        """One of the learner's extra stages, on its own data with its own optimiser."""
        policy = self._checkpoint_policy(run, phase, stage.epochs, task)
        run_stage(run, stage, phase, ctx.indices, resumed, policy)

    def _evaluate(
        self, run: RunState, ctx: TaskContext, loss: float | None, seconds: float
    ) -> dict[str, Any]:
        """Every classifier of the learner on every class seen so far."""
        cfg, info, t = self.cfg, ctx.info, ctx.info.task_id
        seen = run.parts.test_scenario[: t + 1]
        learner = run.learner
        learner.reset_evaluation_stats()
        top1, top5, targets = predict_seen(
            learner,
            run.parts.test,
            run.parts.test_scenario,
            t,
            cfg.train.eval_batch_size,
            run.amp,
            run.test_features,
        )
        stats = {k: float(v) for k, v in learner.evaluation_stats().items()}
        record = {
            "task_id": t,
            "num_seen_classes": info.num_seen_classes,
            "num_new_classes": info.num_new_classes,
            **task_metrics(
                top1,
                top5,
                targets,
                seen,
                run.parts.train_counts[: info.num_seen_classes],
                cfg.scenario.many_threshold,
                cfg.scenario.few_threshold,
            ),
            "train_loss": loss,
            "num_train_samples": len(ctx.indices),
            "memory_size": learner.stored_samples(),
            "train_seconds": round(seconds, 3),
        }
        if stats:
            record["evaluation_stats"] = stats
        run.logger.scalars(
            {
                f"accuracy/{name}": record.get("accuracy" if name == "cnn" else f"accuracy_{name}")
                for name in record["classifiers"]
            }
            | {"accuracy/old": record["old_accuracy"], "accuracy/new": record["new_accuracy"]}
            | {f"stats/{k}": v for k, v in stats.items()},
            info.num_seen_classes,
        )
        return record


def _weights_provenance(parts: RunParts) -> dict[str, Any]:
    """What a pre-trained backbone loaded (model, tag, file and hashes; see
    :class:`~cilkit.backbones.timm_backbone.TimmBackbone`), empty for the others."""
    backbone = getattr(parts.learner.network, "backbone", None)
    return dict(getattr(backbone, "provenance", None) or {})


def _phase_name(phase: Phase) -> str:
    return "train" if phase.when == "train" else f"{phase.when}-{phase.index}"
