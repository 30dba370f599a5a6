"""Checks that need the dataset or the registries, run before any training starts."""

from __future__ import annotations

from cilkit.config.schema import ExperimentConfig
from cilkit.config.source import ConfigSource
from cilkit.errors import ConfigError
from cilkit.registry import get_registry


def validate_experiment(
    cfg: ExperimentConfig, num_classes: int, source: ConfigSource | str | None = None
) -> None:
    """Refuse impossible combinations with a one-line error naming the key and where its value
    came from (the file or the command-line override).

    Args:
        cfg: the experiment config.
        num_classes: number of classes of the loaded dataset.
        source: the config file or :class:`ConfigSource`, for the message.
    """
    learners, heads = get_registry("learner"), get_registry("head")

    src = ConfigSource.of(source)

    def fail(key: str, message: str) -> None:
        raise src.error(key, message)

    sc = cfg.scenario
    first = sc.initial_increment if sc.initial_increment is not None else sc.increment
    if first > num_classes:
        key = (
            "scenario.initial_increment"
            if sc.initial_increment is not None
            else "scenario.increment"
        )
        fail(key, f"{first} classes in the first task, but {cfg.data.name} has {num_classes}")
    if (num_classes - first) % sc.increment:
        fail(
            "scenario.increment",
            f"the {num_classes - first} classes after the first task of {first} do not split "
            f"into tasks of {sc.increment} ({cfg.data.name} has {num_classes} classes)",
        )
    if sc.class_order is not None and sorted(sc.class_order) != list(range(num_classes)):
        fail(
            "scenario.class_order",
            f"must be a permutation of 0..{num_classes - 1} ({len(sc.class_order)} values given)",
        )

    learner = learners.get(cfg.learner.name).obj
    bb = cfg.backbone
    if bb.head is not None:
        try:
            heads.get(bb.head)
        except ConfigError as err:
            raise src.error("backbone.head", str(err)) from None
        if learner.head is not None and bb.head != learner.head:
            fail(
                "backbone.head",
                f"learner '{cfg.learner.name}' needs the {learner.head} head, not {bb.head}; "
                "leave backbone.head out to get it",
            )
    head = bb.head or learner.head or "linear"
    loss = cfg.learner.loss
    if get_registry("loss").get(loss.name).obj.needs_cosine_logits and (
        head != "cosine" or bb.learn_cosine_scale or bb.cosine_scale != 1.0
    ):
        fail(
            "backbone.head",
            f"loss '{loss.name}' expects cosines in [-1, 1] (a normalised head with a fixed "
            "scale, as Cao et al.'s NormedLinear): set backbone.head=cosine, "
            "backbone.learn_cosine_scale=false and backbone.cosine_scale=1",
        )

    mem = cfg.memory
    if learner.needs_memory and not mem.enabled:
        fail(
            "memory",
            f"learner '{cfg.learner.name}' needs an exemplar memory: set memory.memory_size "
            "or memory.memory_per_class",
        )
    if mem.enabled and not learner.uses_memory:
        fail(
            "memory",
            f"learner '{cfg.learner.name}' keeps no exemplars; remove the memory budget "
            "(or use replay)",
        )
    if mem.enabled and learner.memory_selection and mem.selection != learner.memory_selection:
        fail(
            "memory.selection",
            f"learner '{cfg.learner.name}' keeps a {learner.memory_selection} memory: set "
            f"memory.selection={learner.memory_selection} (got {mem.selection})",
        )
    if mem.enabled:
        try:
            selector = get_registry("buffer").get(mem.selection).obj
        except ConfigError as err:
            raise src.error("memory.selection", str(err)) from None
        if mem.memory_size is not None and mem.memory_size < num_classes:
            fail(
                "memory.memory_size",
                f"{mem.memory_size} exemplars cannot keep one per class for the "
                f"{num_classes} classes of {cfg.data.name}",
            )
        if not selector.per_class and mem.memory_size is None:
            fail("memory.memory_per_class", f"'{mem.selection}' needs a fixed memory_size")
