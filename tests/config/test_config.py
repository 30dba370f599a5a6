"""Typed configs: defaults, overrides, and a one-line error for every bad input."""

from __future__ import annotations

import pytest

from cilkit.config import build_config, describe_config, dump_config, load_config
from cilkit.config.schema import ExperimentConfig, OptimConfig
from cilkit.config.validate import validate_experiment
from cilkit.errors import ConfigError
from cilkit.learners.icarl import ICaRLConfig


def test_defaults_and_sections_left_out():
    cfg = build_config({"learner": {"name": "finetune"}})
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.learner.name == "finetune"
    assert cfg.scenario.class_order_seed == 1993
    assert not cfg.memory.enabled


def test_learner_section_gets_its_typed_config():
    cfg = build_config({"learner": {"name": "icarl", "kd_temperature": 3}})
    assert isinstance(cfg.learner, ICaRLConfig)
    assert cfg.learner.kd_temperature == 3.0 and isinstance(cfg.learner.kd_temperature, float)


def test_dotted_overrides_parse_yaml_values():
    cfg = build_config(
        {"learner": {"name": "icarl"}},
        ["train.epochs=2", "learner.kd_temperature=3", "optim.milestones=[1,2]", "data.root=/d"],
    )
    assert cfg.train.epochs == 2
    assert cfg.learner.kd_temperature == 3.0
    assert cfg.optim.milestones == (1, 2)
    assert cfg.data.root == "/d"


def test_override_can_switch_learner_by_name():
    cfg = build_config({}, ["learner=wa"])
    assert cfg.learner.name == "wa"


def test_a_choice_spelled_as_a_yaml_boolean_is_the_word(tmp_path):
    """YAML 1.1 reads ``off`` as False: ``engine.amp=off`` (or ``amp: off`` in a file) is the
    choice ``off``, and a boolean where no such word is a choice is still refused."""
    assert build_config({}, ["engine.amp=off"]).engine.amp == "off"
    path = tmp_path / "c.yaml"
    path.write_text("engine:\n  amp: off\n")
    assert load_config(path).engine.amp == "off"
    with pytest.raises(ConfigError, match="engine.progress=off: False is not one of"):
        build_config({}, ["engine.progress=off"])


def test_round_trip_through_yaml(tmp_path):
    cfg = build_config({"learner": {"name": "wa"}, "memory": {"memory_size": 2000}})
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


@pytest.mark.parametrize(
    "data, overrides, expected",
    [
        ({"trian": {}}, [], "trian: unknown key (did you mean 'train'?)"),
        ({"train": {"epoch": 3}}, [], "train.epoch: unknown key (did you mean 'epochs'?)"),
        ({"train": {"epochs": "many"}}, [], "train.epochs: expected int, got 'many'"),
        ({"train": {"epochs": 2.5}}, [], "train.epochs: expected int, got 2.5"),
        ({"engine": {"channels_last": "yes"}}, [], "engine.channels_last: expected bool"),
        ({"scenario": {"increment": 0}}, [], "scenario.increment: must be >= 1"),
        ({"optim": {"scheduler": "cosin"}}, [], "did you mean 'cosine'"),
        ({"learner": {"name": "icarl", "kd_temp": 2}}, [], "learner.kd_temp: unknown key"),
        (
            {"learner": {"name": "icrl"}},
            [],
            "learner.name: unknown learner 'icrl' (did you mean 'icarl'?)",
        ),
        ({"memory": {"memory_size": 10, "memory_per_class": 2}}, [], "either memory_size or"),
        ({"optim": {"milestones": [80, 40]}}, [], "optim.milestones: must be increasing"),
        ({}, ["train.epochs"], "expected key.path=value"),
        ({}, ["train.epochs.x=1"], "train.epochs.x=1: train.epochs: expected int, got {'x': 1}"),
        ({"train": {"epochs": 3}}, ["train.epochs.x=1"], "train.epochs is a value, not a section"),
        ({"train": 5}, [], "train: expected TrainConfig, got 5"),
    ],
)
def test_bad_values_are_one_line_errors_naming_key_and_file(data, overrides, expected):
    with pytest.raises(ConfigError) as err:
        build_config(data, overrides, source="exp.yaml")
    message = str(err.value)
    assert expected in message
    assert "\n" not in message
    if not any("=" not in o for o in overrides):
        # a value from the file blames the file; one from an override blames the command line
        assert message.startswith("command line: " if overrides else "exp.yaml: ")


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["optim.lr=-1"], "command line: optim.lr=-1: must be > 0"),
        (["train.epochs=many"], "command line: train.epochs=many: expected int, got 'many'"),
        (
            ["learner.name=icarl", "learner.kd_temprature=3"],
            "command line: learner.kd_temprature=3: unknown key (did you mean 'kd_temperature'?)",
        ),
        (["learner.name=icrl"], "command line: learner.name=icrl: unknown learner 'icrl'"),
        (["optim={lr: 0}"], "command line: optim={lr: 0}: optim.lr: must be > 0"),
    ],
)
def test_errors_from_overrides_blame_the_command_line(overrides, expected):
    data = {"optim": {"lr": 0.1}, "learner": {"name": "icarl"}}
    with pytest.raises(ConfigError) as err:
        build_config(data, overrides, source="exp.yaml")
    assert str(err.value).startswith(expected)
    assert "exp.yaml" not in str(err.value)


def test_cross_checks_blame_the_command_line_too():
    cfg = build_config({}, ["scenario.initial_increment=20"], source="exp.yaml")
    from cilkit.config.source import ConfigSource

    src = ConfigSource("exp.yaml", ("scenario.initial_increment=20",))
    with pytest.raises(ConfigError, match=r"^command line: scenario.initial_increment=20: 20 cl"):
        validate_experiment(cfg, 10, src)
    with pytest.raises(ConfigError, match=r"^exp.yaml: scenario.initial_increment: 20 classes"):
        validate_experiment(cfg, 10, "exp.yaml")


@pytest.mark.parametrize(
    "spelling", ["1e-3", "1E-3", "1e6", "1.5e+3", ".5", "5.", "2.5E-4", "1_000.0"]
)
@pytest.mark.parametrize("where", ["override", "yaml file", "quoted in the file"])
def test_every_float_spelling_is_a_float(spelling, where, tmp_path):
    expected = float(spelling.replace("_", ""))
    if where == "override":
        cfg = build_config({}, [f"optim.lr={spelling}"])
    else:
        text = f'"{spelling}"' if where == "quoted in the file" else spelling
        (tmp_path / "c.yaml").write_text(f"optim:\n  lr: {text}\n")
        cfg = load_config(tmp_path / "c.yaml")
    assert cfg.optim.lr == expected and isinstance(cfg.optim.lr, float)


def test_an_int_field_still_refuses_a_float(tmp_path):
    (tmp_path / "c.yaml").write_text("optim:\n  milestones: [1e1]\n")
    with pytest.raises(ConfigError, match=r"optim.milestones: expected list of int, got \[10.0\]"):
        load_config(tmp_path / "c.yaml")


def test_words_are_not_floats():
    for text in ("fast", "nan", "inf", "1e", "e5"):
        with pytest.raises(ConfigError, match="expected float"):
            build_config({}, [f"optim.lr={text}"])


def test_an_empty_config_file_is_refused(tmp_path):
    for text in ("", "# only a comment\n", "\n\n"):
        (tmp_path / "empty.yaml").write_text(text)
        with pytest.raises(ConfigError, match=r"empty.yaml: the file is empty") as err:
            load_config(tmp_path / "empty.yaml")
        assert "\n" not in str(err.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: [1,\n")
    with pytest.raises(ConfigError, match=r"bad.yaml line \d+: invalid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(scalar)


@pytest.mark.parametrize(
    "data, num_classes, expected",
    [
        ({"scenario": {"increment": 20}}, 10, "scenario.increment: 20 classes in the first task"),
        (
            {"scenario": {"initial_increment": 50, "increment": 20}},
            100,
            "the 50 classes after the first task of 50 do not split into tasks of 20",
        ),
        (
            {"scenario": {"class_order": [0, 1, 1], "increment": 1}},
            3,
            "scenario.class_order: must be a permutation",
        ),
        (
            {"learner": {"loss": {"name": "ldam"}}},
            10,
            "backbone.head: loss 'ldam' expects cosines in [-1, 1]",
        ),
        (  # a learnable scale would shrink LDAM's margins as it grows
            {"learner": {"loss": {"name": "ldam"}}, "backbone": {"head": "cosine"}},
            10,
            "set backbone.head=cosine, backbone.learn_cosine_scale=false",
        ),
        ({"learner": {"name": "icarl"}}, 10, "memory: learner 'icarl' needs an exemplar memory"),
        (
            {"learner": {"name": "finetune"}, "memory": {"memory_size": 20}},
            10,
            "learner 'finetune' keeps no exemplars",
        ),
        (
            {"learner": {"name": "icarl"}, "memory": {"memory_size": 50}},
            100,
            "memory.memory_size: 50 exemplars cannot keep one per class for the 100 classes",
        ),
        (
            {"learner": {"name": "replay"}, "memory": {"memory_size": 500, "selection": "herd"}},
            10,
            "memory.selection: unknown buffer 'herd'",
        ),
        (
            {
                "learner": {"name": "replay"},
                "memory": {"memory_per_class": 5, "selection": "reservoir"},
            },
            10,
            "'reservoir' needs a fixed memory_size",
        ),
    ],
)
def test_cross_checks_against_the_dataset(data, num_classes, expected):
    cfg = build_config(data)
    with pytest.raises(ConfigError) as err:
        validate_experiment(cfg, num_classes, source="exp.yaml")
    assert expected in str(err.value)
    assert str(err.value).startswith("exp.yaml: ")


def test_ldam_with_a_fixed_scale_cosine_head_is_accepted():
    head = {"head": "cosine", "learn_cosine_scale": False}
    cfg = build_config({"learner": {"loss": {"name": "ldam"}}, "backbone": head})
    validate_experiment(cfg, 10)


def test_first_task_optim_values():
    opt = OptimConfig(lr=0.1, init_lr=0.5, milestones=(80, 120), init_milestones=(60, 120, 170))
    assert opt.for_task(0) == (0.5, opt.weight_decay, (60, 120, 170))
    assert opt.for_task(3) == (0.1, opt.weight_decay, (80, 120))


def test_describe_config_has_docs():
    rows = {key: (tp, default, doc) for key, tp, default, doc in describe_config(ICaRLConfig)}
    assert rows["kd_temperature"][1] == 2.0
    assert "distillation" in rows["kd_temperature"][2]
