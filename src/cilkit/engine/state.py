"""One run's state, handed to every part of the engine instead of ten arguments."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from cilkit.buffers.features import FeatureCache
from cilkit.config import ExperimentConfig
from cilkit.engine.build import RunParts
from cilkit.engine.distributed import Distributed
from cilkit.engine.evaluate import TestFeatures
from cilkit.engine.interrupts import InterruptHandler
from cilkit.engine.logger import RunLogger
from cilkit.engine.progress import Progress
from cilkit.engine.runtime import autocast_dtype
from cilkit.results.run_dir import RunDirectory


@dataclass
class RunState:
    """Everything the engine's parts share during one run.

    Attributes:
        cfg: the resolved config.
        run: the run directory.
        parts: dataset, scenarios, device splits, learner, device.
        dist: this process's place in a torchrun job.
        amp: the autocast dtype, or None.
        generators: the engine's saved generators: ``shuffle`` (batch order, CPU) and
            ``augment`` (augmentation, on the device).
        progress: the progress-bar factory.
        logger: ``log.txt`` and TensorBoard.
        interrupt: the Ctrl-C handler.
        say: prints a line (rank 0) and logs it.
        warn: prints a warning (rank 0) and logs it.
        records: the metrics of the finished tasks.
        test_features: the test images' features under a frozen evaluation extractor, kept
            between evaluations when ``engine.feature_cache`` is on.
        stage_features: training images' features under a stage's frozen ``features`` module.
    """

    cfg: ExperimentConfig
    run: RunDirectory
    parts: RunParts
    dist: Distributed
    amp: torch.dtype | None
    generators: dict[str, torch.Generator]
    progress: Progress
    logger: RunLogger
    interrupt: InterruptHandler
    say: Callable[[str], None]
    warn: Callable[[str], None]
    records: list[dict[str, Any]] = field(default_factory=list)
    test_features: TestFeatures = field(default_factory=TestFeatures)
    stage_features: FeatureCache = field(default_factory=FeatureCache)

    def __post_init__(self) -> None:
        self.test_features.enabled = self.cfg.engine.feature_cache

    @property
    def main_process(self) -> bool:
        return self.dist.rank == 0

    @property
    def learner(self):
        return self.parts.learner

    @property
    def device(self) -> torch.device:
        return self.parts.device

    @property
    def num_tasks(self) -> int:
        return self.parts.train_scenario.num_tasks


def standalone_state(
    cfg: ExperimentConfig,
    parts: RunParts,
    run_dir: RunDirectory,
    logger: RunLogger,
    say: Callable[[str], None],
    seed_offset: int = 0,
) -> RunState:
    """A one-process run state for work outside a ``Trainer`` run (e.g. re-training a finished
    run's classifier), with its own generators seeded from ``cfg.seed + seed_offset``."""
    seed = cfg.seed + seed_offset
    return RunState(
        cfg=cfg,
        run=run_dir,
        parts=parts,
        dist=Distributed(),
        amp=autocast_dtype(cfg.engine, parts.device),
        generators={
            "shuffle": torch.Generator().manual_seed(seed),
            "augment": torch.Generator(device=parts.device).manual_seed(seed + 1),
        },
        progress=Progress(cfg.engine.progress),
        logger=logger,
        interrupt=InterruptHandler(),
        say=say,
        warn=lambda text: say(f"warning: {text}"),
    )
