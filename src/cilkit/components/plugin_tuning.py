"""Plug-in classifier tuning (Du & Wu, "No One Left Behind", CVPR 2023): re-train the classifier
of a finished run on frozen features with another loss (GML by default), optionally ensembling
the old and new classifiers' softmax outputs with temperatures.

Saved as a new run directory whose ``summary.json`` holds the metrics of the original
classifier (``before``), the re-trained one (``after``) and, if asked, the ``ensemble``. A method
on the engine's public API: it builds the run (:func:`~cilkit.engine.build.build_run`) and
trains one stage (:func:`~cilkit.engine.loop.run_stage`).
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cilkit.backbones.weights import WeightsError, load_network_weights
from cilkit.config import ExperimentConfig, build_config, dump_config, load_config
from cilkit.config.schema import OptimConfig
from cilkit.config.source import ConfigSource
from cilkit.contract import Batch, StepOutput, TaskContext, TrainingStage
from cilkit.engine.build import build_run, to_device
from cilkit.engine.checkpoint import find_resume_checkpoint
from cilkit.engine.evaluate import task_metrics
from cilkit.engine.logger import RunLogger
from cilkit.engine.loop import Phase, run_stage
from cilkit.engine.state import standalone_state
from cilkit.errors import CheckpointError
from cilkit.losses import create_loss
from cilkit.metrics import LONG_TAIL_SCALARS
from cilkit.results.io import atomic_write_json
from cilkit.results.run_dir import RunDirectory


@dataclass(frozen=True)
class TuneOptions:
    """What ``cilkit tune`` re-trains and how."""

    loss: dict[str, Any] = dataclasses.field(default_factory=lambda: {"name": "gml"})
    freeze: str = "backbone"
    """backbone: train the classifier on frozen features; none: fine-tune everything."""
    epochs: int = 10
    lr: float = 0.01
    weight_decay: float = 5e-4
    ensemble: bool = False
    t_new: float = 1.0
    """Temperature of the re-trained classifier's softmax in the ensemble."""
    t_old: float = 1.0
    """Temperature of the original classifier's softmax in the ensemble."""


def tune(source_dir: str | Path, out_dir: str | Path, opts: TuneOptions, log: Any = "stdout"):
    """Re-train the classifier of the finished run in ``source_dir`` into ``out_dir``."""
    source = RunDirectory(source_dir)
    if not source.config_path.exists():
        raise CheckpointError(f"--from {source.path}: not a run directory (no config.yaml)")
    cfg = load_config(source.config_path)
    loss_cfg = _loss_config(cfg, opts)
    # The checkpoint replaces every weight: backbone.weights (if any) is not read again.
    s = build_run(cfg, str(source.config_path), load_weights=False)
    found = find_resume_checkpoint(source.path / "checkpoints")
    if found is None:
        raise CheckpointError(f"--from {source.path}: the run has no checkpoint")
    _, state, _ = found
    if state.get("partial") is not None or state["next_task"] != s.train_scenario.num_tasks:
        raise CheckpointError(f"--from {source.path}: the run has not finished all its tasks")
    learner = s.learner
    learner.load_state_dict(state["learner"])
    to_device(learner, s.device, cfg.engine.channels_last)
    t = s.train_scenario.num_tasks - 1
    return _tune(cfg, s, t, loss_cfg, out_dir, opts, log, str(source.path))


def tune_weights(
    cfg: ExperimentConfig,
    weights: str | Path,
    out_dir: str | Path,
    opts: TuneOptions,
    log: Any = "stdout",
    source: ConfigSource | str | None = None,
):
    """Re-train the classifier of a model trained elsewhere (``cilkit tune --weights``).

    ``cfg`` describes the data and the backbone; its scenario must be one task holding every
    class (the long-tailed recognition setting). The backbone and the classifier come from
    ``weights`` (see :mod:`cilkit.backbones.weights`); the file's classifier must have one row
    per class of the dataset, since it is the classifier being tuned and the ``before`` scores.
    """
    cfg = dataclasses.replace(cfg, backbone=dataclasses.replace(cfg.backbone, weights=str(weights)))
    loss_cfg = _loss_config(cfg, opts)
    s = build_run(cfg, source, load_weights=False)
    src = ConfigSource.of(source)
    scn = s.train_scenario
    if scn.num_tasks != 1:
        raise src.error(
            "scenario.initial_increment",
            f"tune --weights needs one task with all {scn.num_classes} classes: set "
            f"scenario.initial_increment={scn.num_classes} (got {scn.num_tasks} tasks)",
        )
    learner = s.learner
    info = scn.task_info(0)
    learner.before_task(TaskContext(info, s.train, torch.Generator(), cfg.train.eval_batch_size))
    mapped = load_network_weights(
        learner.network, weights, cfg.backbone.weights_strict, scn.num_classes, scn.class_order
    )
    if not mapped.head_loaded:
        raise WeightsError(f"{weights}: cannot tune its classifier: {mapped.head_note}")
    to_device(learner, s.device, cfg.engine.channels_last)
    return _tune(cfg, s, 0, loss_cfg, out_dir, opts, log, str(weights), report=mapped.summary())


def _loss_config(cfg: ExperimentConfig, opts: TuneOptions):
    return build_config({"learner": {"name": cfg.learner.name, "loss": opts.loss}}).learner.loss


def _tune(
    cfg, s, t: int, loss_cfg, out_dir, opts: TuneOptions, log: Any, tuned_from: str, report=""
):
    """Tune the head of ``s.learner`` (holding the classes up to task ``t``) into ``out_dir``."""
    learner = s.learner
    info = s.train_scenario.task_info(t)
    gen = torch.Generator().manual_seed(cfg.seed + 7)
    ctx = TaskContext(info, s.train, gen, cfg.train.eval_batch_size)
    indices = learner.train_indices(ctx)
    if learner.memory is not None:
        indices = torch.unique(torch.cat([ctx.new_indices(), learner.memory.indices()]))

    seen = s.test_scenario[: t + 1]
    old_head = copy.deepcopy(learner.network.head)
    # Each head is scored with its own loss's prediction-time adjustment (post-hoc logit
    # adjustment): the source run's for the original head, the tuning loss's for the new one.
    before = _scores(
        learner, old_head, learner.loss_fn.adjust_logits, s, seen.indices, cfg.train.eval_batch_size
    )

    network = learner.network
    new_loss = create_loss(loss_cfg).to(s.device)
    new_loss.set_class_counts(
        torch.bincount(s.train.targets_cpu[indices], minlength=info.num_seen_classes)
    )
    if opts.freeze == "backbone":
        params = [p for p in network.head.parameters() if p.requires_grad]
    else:
        params = [p for p in network.parameters() if p.requires_grad]

    def step(batch: Batch) -> StepOutput:
        if opts.freeze == "backbone":
            with torch.no_grad():
                features = network.forward_features(batch.x)
        else:
            features = network.forward_features(batch.x)
        logits = network.forward_head(features)
        loss = new_loss(logits, batch.y, features if new_loss.needs_features else None)
        return StepOutput(loss, {"tune": loss.detach()}, logits)

    epochs = opts.epochs

    def before_epoch(epoch: int) -> None:
        new_loss.set_epoch(epoch, epochs)
        if opts.freeze == "backbone":
            network.backbone.eval()

    stage = TrainingStage(
        name=f"tune ({loss_cfg.name})",
        parameters=params,
        epochs=epochs,
        optim=OptimConfig(lr=opts.lr, weight_decay=opts.weight_decay, scheduler="cosine"),
        step=step,
        before_epoch=before_epoch,
    )
    run = RunDirectory(out_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    logger = RunLogger(run.path, cfg.engine.tensorboard)

    def say(text: str) -> None:
        if log is not None:
            print(text, file=sys.stdout if log == "stdout" else log, flush=True)
        logger.text(text)

    if report:
        say(report)
    state = standalone_state(cfg, s, run, logger, say, seed_offset=8)
    run_stage(state, stage, Phase(t, "after_task", 0, stage.name), indices)
    after = _scores(
        learner, network.head, new_loss.adjust_logits, s, seen.indices, cfg.train.eval_batch_size
    )

    results = {"before": _metrics(before, seen, s, cfg), "after": _metrics(after, seen, s, cfg)}
    if opts.ensemble:
        probs = F.softmax(after[0] / opts.t_new, dim=1) + F.softmax(before[0] / opts.t_old, dim=1)
        results["ensemble"] = _metrics((probs, after[1]), seen, s, cfg)
    tuned_cfg = dataclasses.replace(
        cfg, learner=dataclasses.replace(cfg.learner, loss=loss_cfg), name=f"{cfg.name}-tuned"
    )
    run.write_config(dump_config(tuned_cfg))
    final = results["ensemble" if opts.ensemble else "after"]
    run.write_metrics([{"task_id": t, "num_seen_classes": info.num_seen_classes, **final}])
    summary = {
        "tuned_from": tuned_from,
        "tune": dataclasses.asdict(opts),
        **{f"{k}": v for k, v in results.items()},
    }
    atomic_write_json(run.summary_path, summary)
    say(_report(results))
    logger.close()
    return summary


@torch.no_grad()
def _scores(learner, head, adjust, s, indices, batch_size) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of ``head``, adjusted by ``adjust``, on the test samples at ``indices`` and their
    targets (CPU)."""
    network = learner.network
    was = network.training
    network.eval()
    logits, targets = [], []
    for batch in s.test.eval_batches(indices, batch_size):
        logits.append(adjust(head(network.forward_features(batch.x))).float())
        targets.append(batch.y)
    network.train(was)
    return torch.cat(logits).cpu(), torch.cat(targets).cpu()


def _metrics(scores: tuple[torch.Tensor, torch.Tensor], seen, s, cfg) -> dict[str, Any]:
    logits, targets = scores
    k = min(5, logits.shape[1])
    top5 = logits.topk(k, dim=1).indices
    counts = s.train_counts[: seen.info.num_seen_classes]
    sc = cfg.scenario
    return task_metrics(
        {"cnn": top5[:, 0]},
        {"cnn": top5},
        targets,
        seen,
        counts,
        sc.many_threshold,
        sc.few_threshold,
    )


def _report(results: dict[str, dict[str, Any]]) -> str:
    keys = [k for k in ("accuracy", *LONG_TAIL_SCALARS) if k in results["before"]]
    lines = ["", f"{'':10}" + "".join(f"{k:>16}" for k in keys)]
    for name, m in results.items():
        vals = "".join(f"{m[k]:16.2f}" if m[k] is not None else f"{'-':>16}" for k in keys)
        lines.append(f"{name:10}{vals}")
    return "\n".join(lines)
