"""``benchmarks/amp_eval.py`` evaluates a finished run's checkpoint the way the engine did: its
fp32 accuracies are the run's own, and the autocast ones are compared prediction by prediction."""

from __future__ import annotations

import json

from bench_scripts import load

from cilkit.config.loader import build_config, parse_yaml, quickstart_config_text
from cilkit.engine.trainer import Trainer


def test_fp32_reproduces_the_run_and_bf16_is_compared_prediction_by_prediction(tmp_path):
    quickstart = parse_yaml(quickstart_config_text(), "quickstart")  # iCaRL, 5 tasks: CNN and NME
    cfg = build_config(
        quickstart, ["train.epochs=2", "engine.progress=none", "engine.tensorboard=false"]
    )
    Trainer(cfg, tmp_path / "run", log=None).fit()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())

    amp_eval = load("amp_eval")
    (result,) = amp_eval.main([str(tmp_path / "run"), "--json", str(tmp_path / "amp.json")])

    assert result["checkpoint"] == "task-004" and result["images"] > 0
    assert result["fp32"]["cnn"] == round(summary["last_accuracy"], 2)
    assert result["fp32"]["nme"] == round(summary["nme_last_accuracy"], 2)
    for classifier in ("cnn", "nme"):
        assert 0 <= result["bf16"][f"{classifier} changed %"] <= 100
        # accuracy moves by at most the share of changed predictions (+ 2-decimal rounding)
        moved = abs(result["bf16"][classifier] - result["fp32"][classifier])
        assert moved <= result["bf16"][f"{classifier} changed %"] + 0.011
    assert json.loads((tmp_path / "amp.json").read_text()) == [result]
