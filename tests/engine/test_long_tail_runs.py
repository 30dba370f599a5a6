"""Long-tailed runs end to end: LT profile, LT metrics in the run directory, losses and samplers
from config, and ``cilkit tune`` (GML plug-in with the ensemble)."""

from __future__ import annotations

import json

import pytest

from cilkit.cli.main import main
from cilkit.components.plugin_tuning import TuneOptions, tune
from cilkit.config import build_config
from cilkit.engine.trainer import Trainer
from cilkit.errors import CheckpointError, ConfigError


def lt_config(*overrides: str, tasks: int = 1):
    data = {
        "seed": 2,
        "data": {"name": "digits"},
        "scenario": {
            "initial_increment": 10 // tasks,
            "increment": 10 // tasks,
            "class_order_seed": None,
            "long_tail": {"kind": "exp", "imb_factor": 20, "max_per_class": 120},
            "many_threshold": 60,
            "few_threshold": 15,
        },
        "backbone": {"name": "convnet4", "hidden": 32},
        "learner": {"name": "finetune"},
        "optim": {"lr": 0.05, "scheduler": "cosine"},
        "train": {"epochs": 8, "batch_size": 32},
        "engine": {"progress": "none"},
    }
    return build_config(data, list(overrides))


@pytest.fixture(scope="module")
def ce_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ce")
    return Trainer(lt_config(), out, log=None).fit(), out


def test_lt_run_reports_long_tail_metrics(ce_run):
    summary, out = ce_run
    counts = summary["train_class_counts"]
    assert counts[0] == 120 and counts[-1] == 6 and counts == sorted(counts, reverse=True)
    for key in (
        "many_accuracy",
        "medium_accuracy",
        "few_accuracy",
        "gm_recall",
        "hm_recall",
        "lowest_recall",
    ):
        assert summary[key] is not None
    assert len(summary["per_class_recall"]) == 10
    assert summary["lowest_recall"] == min(summary["per_class_recall"])
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["train_class_counts"] == counts
    assert (out / "plots" / "per_class_accuracy.png").stat().st_size > 0


def test_lt_cil_with_loss_sampler_and_rebalance(tmp_path):
    cfg = lt_config(
        "learner={name: icarl, loss: {name: bsce}, rebalance: {method: lws, epochs: 2}}",
        "memory.memory_per_class=5",
        "train.sampler.name=class_aware",
        "train.epochs=2",
        tasks=2,
    )
    summary = Trainer(cfg, tmp_path, log=None).fit()
    assert summary["num_tasks"] == 2 and summary["few_accuracy"] is not None


def test_profile_that_empties_a_class_is_a_config_error(tmp_path):
    cfg = lt_config("scenario.long_tail.imb_factor=1000", "scenario.long_tail.max_per_class=5")
    with pytest.raises(ConfigError, match="scenario.long_tail"):
        Trainer(cfg, tmp_path, log=None).fit()


def test_tune_with_gml_and_ensemble(ce_run, tmp_path):
    _, source = ce_run
    out = tmp_path / "tuned"
    summary = tune(source, out, TuneOptions(epochs=5, lr=0.05, ensemble=True), log=None)
    before, after, ens = summary["before"], summary["after"], summary["ensemble"]
    for m in (before, after, ens):
        assert {"accuracy", "many_accuracy", "few_accuracy", "gm_recall", "lowest_recall"} <= set(m)
    # the ensemble of two classifiers does not fall below the worse of them (beyond noise)
    assert ens["accuracy"] >= min(before["accuracy"], after["accuracy"]) - 2.0
    assert json.loads((out / "metrics.jsonl").read_text())["accuracy"] == ens["accuracy"]
    assert (out / "config.yaml").exists() and "gml" in (out / "config.yaml").read_text()


def test_tune_refuses_unfinished_runs(tmp_path):
    cfg = lt_config(tasks=2)
    Trainer(cfg, tmp_path / "run", log=None).fit(stop_after_task=0)
    with pytest.raises(CheckpointError, match="has not finished"):
        tune(tmp_path / "run", tmp_path / "out", TuneOptions(epochs=1), log=None)


def test_tune_cli(ce_run, tmp_path, capsys):
    _, source = ce_run
    out = tmp_path / "cli"
    assert (
        main(["tune", "--from", str(source), "--out", str(out), "--loss", "bsce", "--epochs", "1"])
        == 0
    )
    assert "after" in capsys.readouterr().out
    assert (
        main(
            [
                "tune",
                "--from",
                str(source),
                "--out",
                str(tmp_path / "x"),
                "loss.bogus=1",
                "--epochs",
                "1",
            ]
        )
        == 2
    )
    assert "bogus" in capsys.readouterr().err


@pytest.fixture(scope="module")
def posthoc_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("posthoc")
    cfg = lt_config("learner.loss={name: la, posthoc: true, tau: 3.0}")
    return Trainer(cfg, out, log=None).fit(), out


def _frozen_tune(source, out, loss):
    """Tuning that leaves the head as it was (lr 1e-12): only the scoring differs."""
    return tune(source, out, TuneOptions(loss=loss, epochs=1, lr=1e-12), log=None)


def test_tune_scores_each_head_with_its_own_adjustment(posthoc_run, ce_run, tmp_path):
    """The source run's post-hoc adjustment scores the original head, the tuning loss's scores
    the re-trained one: never the prior subtracted twice, never a post-hoc loss unapplied."""
    summary, source = posthoc_run
    la = {"name": "la", "posthoc": True, "tau": 3.0}
    same = _frozen_tune(source, tmp_path / "la", la)
    assert same["before"]["accuracy"] == summary["last_accuracy"]  # adjusted, as in the run
    assert same["after"]["accuracy"] == same["before"]["accuracy"]
    plain = _frozen_tune(source, tmp_path / "ce", {"name": "ce"})
    assert plain["before"]["accuracy"] == summary["last_accuracy"]
    assert plain["after"]["accuracy"] != plain["before"]["accuracy"]  # not adjusted
    # the other way round: a CE run tuned with post-hoc LA applies the adjustment once
    ce_summary, ce_source = ce_run
    adjusted = _frozen_tune(ce_source, tmp_path / "ce-la", la)
    assert adjusted["before"]["accuracy"] == ce_summary["last_accuracy"]
    assert adjusted["after"]["accuracy"] != adjusted["before"]["accuracy"]
