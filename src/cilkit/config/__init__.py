"""Typed experiment configs: YAML plus dotted overrides, strictly validated."""

from cilkit.config.loader import (
    build_config,
    config_to_dict,
    describe_config,
    dump_config,
    load_config,
    parse_override,
)
from cilkit.config.schema import (
    AugmentConfig,
    BackboneConfig,
    DataConfig,
    EngineConfig,
    ExperimentConfig,
    LearnerConfig,
    MemoryConfig,
    OptimConfig,
    ScenarioConfig,
    TrainConfig,
)

__all__ = [
    "AugmentConfig",
    "BackboneConfig",
    "DataConfig",
    "EngineConfig",
    "ExperimentConfig",
    "LearnerConfig",
    "MemoryConfig",
    "OptimConfig",
    "ScenarioConfig",
    "TrainConfig",
    "build_config",
    "config_to_dict",
    "describe_config",
    "dump_config",
    "load_config",
    "parse_override",
]
