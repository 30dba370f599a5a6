"""The one training loop: data, model, optimiser, evaluation and the run directory.

It calls the learner's hooks and never names a learner.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cilkit.backbones import create_network
from cilkit.config import ExperimentConfig, dump_config
from cilkit.config.validate import validate_experiment
from cilkit.data import datasets as _datasets  # noqa: F401  (registers the adapters)
from cilkit.data.base import DatasetSplits, create_dataset
from cilkit.data.transforms import BatchTransform, resolve_preset
from cilkit.engine.data import DeviceSplit
from cilkit.engine.evaluate import predict_split, task_metrics
from cilkit.engine.optim import build_optimizer, build_scheduler
from cilkit.engine.progress import Progress
from cilkit.engine.runtime import autocast, autocast_dtype, resolve_device, seed_everything
from cilkit.errors import CilkitError
from cilkit.learners import Learner, StepOutput, TaskContext, create_learner
from cilkit.results.plots import plot_accuracy_curve, plot_accuracy_matrix
from cilkit.results.run_dir import RunDirectory, summarize
from cilkit.scenarios import ClassIncremental, resolve_class_order


class TrainingError(CilkitError):
    """Training cannot go on (a NaN loss, ...)."""


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


class Trainer:
    """Runs one experiment into a run directory.

    Args:
        cfg: the resolved experiment config.
        run_dir: where the run's files go.
        source: the config file the run came from (for error messages).
        log: a text stream for tables and messages; "stdout" (the current sys.stdout) or None.
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        run_dir: str | Path,
        source: str | None = None,
        log: Any = "stdout",
    ) -> None:
        self.cfg = cfg
        self.run = RunDirectory(run_dir)
        self.source = source
        self.log = log

    def _print(self, text: str = "") -> None:
        if self.log is not None:
            print(text, file=sys.stdout if self.log == "stdout" else self.log, flush=True)

    # ---- set-up ----------------------------------------------------------------------------------
    def setup(self) -> Setup:
        cfg = self.cfg
        seed_everything(cfg.seed, cfg.engine.deterministic)
        if cfg.engine.num_threads:
            torch.set_num_threads(cfg.engine.num_threads)
        device = resolve_device(cfg.engine)
        dataset = create_dataset(cfg.data)
        validate_experiment(cfg, dataset.num_classes, self.source)
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
        kw = {"num_workers": cfg.train.num_workers, "on_unreadable": cfg.data.on_unreadable}
        train = DeviceSplit(dataset.train, train_scn.targets, transform, device, **kw)
        test = DeviceSplit(dataset.test, test_scn.targets, transform, device, **kw)
        network = create_network(cfg.backbone, dataset.train.image_shape[0])
        learner = create_learner(cfg.learner, network, cfg.memory)
        return Setup(dataset, train_scn, test_scn, train, test, learner, device)

    def _to_device(self, learner: Learner, device: torch.device) -> None:
        learner.to(device)
        if self.cfg.engine.channels_last:
            learner.to(memory_format=torch.channels_last)

    # ---- the loop ----------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train on every task, evaluating after each; returns the summary."""
        cfg = self.cfg
        s = self.setup()
        self.run.path.mkdir(parents=True, exist_ok=True)
        self.run.write_config(dump_config(cfg))
        amp = autocast_dtype(cfg.engine, s.device)
        shuffle_gen = torch.Generator().manual_seed(cfg.seed)
        learner_gen = torch.Generator().manual_seed(cfg.seed + 1)
        aug_gen = torch.Generator(device=s.device).manual_seed(cfg.seed + 2)
        progress = Progress(cfg.engine.progress)
        self._print(
            f"{cfg.name}: {cfg.learner.name} on {cfg.data.name}, {s.train_scenario.num_tasks} tasks "
            f"{list(s.train_scenario.increments)}, {cfg.backbone.name}, device {s.device}"
        )
        self._print(f"run directory: {self.run.path}")
        header = _table_header()
        records: list[dict[str, Any]] = []
        for t in range(s.train_scenario.num_tasks):
            info = s.train_scenario.task_info(t)
            ctx = TaskContext(info, s.train, learner_gen, cfg.train.eval_batch_size)
            s.learner.before_task(ctx)
            self._to_device(s.learner, s.device)
            indices = s.learner.train_indices(ctx)
            start = time.perf_counter()
            loss = self._train_task(s, t, indices, shuffle_gen, aug_gen, amp, progress)
            s.learner.after_task(ctx)
            self._to_device(s.learner, s.device)
            train_seconds = time.perf_counter() - start
            seen = s.test_scenario[: t + 1]
            top1, top5, targets = predict_split(
                s.learner, s.test, seen.indices, cfg.train.eval_batch_size, amp
            )
            record = {
                "task_id": t,
                "num_seen_classes": info.num_seen_classes,
                "num_new_classes": info.num_new_classes,
                **task_metrics(top1, top5, targets, seen),
                "train_loss": loss,
                "num_train_samples": len(indices),
                "memory_size": len(s.learner.memory) if s.learner.memory is not None else 0,
                "train_seconds": round(train_seconds, 3),
            }
            records.append(record)
            self.run.write_metrics(records)
            if t == 0:
                self._print(header)
            self._print(_table_row(record))
        summary = summarize(records)
        summary.update(
            {"learner": cfg.learner.name, "dataset": cfg.data.name, "backbone": cfg.backbone.name}
        )
        self.run.write_summary(summary)
        self._write_plots(records, summary)
        self._print(_summary_text(summary))
        return summary

    def _train_task(
        self,
        s: Setup,
        task_id: int,
        indices: torch.Tensor,
        shuffle_gen: torch.Generator,
        aug_gen: torch.Generator,
        amp: torch.dtype | None,
        progress: Progress,
    ) -> float | None:
        cfg = self.cfg
        epochs = cfg.train.epochs_for_task(task_id)
        learner = s.learner
        if epochs == 0 or len(indices) == 0:
            return None
        optimizer = build_optimizer(learner.parameters_to_optimize(), cfg.optim, task_id)
        scheduler = build_scheduler(optimizer, cfg.optim, task_id, epochs)
        scaler = torch.amp.GradScaler(s.device.type, enabled=amp == torch.float16)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        bar = progress.bar(epochs, f"task {task_id + 1}/{s.train_scenario.num_tasks}")
        mean_loss = None
        learner.train()
        for epoch in range(epochs):
            total = torch.zeros((), device=s.device)
            correct = torch.zeros((), device=s.device)
            seen = 0
            for _step, batch in enumerate(
                s.train.train_batches(indices, cfg.train.batch_size, shuffle_gen, aug_gen)
            ):
                with autocast(s.device, amp):
                    out = learner.training_step(batch)
                if not isinstance(out, StepOutput):
                    out = StepOutput(out)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(out.loss).backward()
                if cfg.train.grad_clip is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                learner.after_step()
                total += out.loss.detach().float() * len(batch.y)
                if out.logits is not None:
                    correct += (out.logits.detach().argmax(1) == batch.y).sum()
                seen += len(batch.y)
            scheduler.step()
            mean_loss = total.item() / max(seen, 1)
            if not torch.isfinite(torch.tensor(mean_loss)):
                raise TrainingError(
                    f"task {task_id}, epoch {epoch}: the loss is {mean_loss}; lower optim.lr "
                    "or set train.grad_clip"
                )
            bar.update(loss=mean_loss, acc=100.0 * correct.item() / max(seen, 1))
        bar.close()
        return mean_loss

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
