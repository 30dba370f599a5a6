"""``engine.amp``: one precision for the whole run. With ``bf16`` every forward pass of the run
(training steps, evaluation, and the feature passes of herding and class means) runs under
bf16 autocast, on the CPU too; ``auto`` is fp32 on the CPU."""

from __future__ import annotations

import pytest
import torch

from cilkit.buffers.features import FeatureCache
from cilkit.config.loader import build_config, parse_yaml, quickstart_config_text
from cilkit.engine.trainer import Trainer


@pytest.mark.parametrize("amp, expected", [("bf16", torch.bfloat16), ("auto", torch.float32)])
def test_every_pass_of_a_run_uses_its_precision(tmp_path, monkeypatch, amp, expected):
    cfg = build_config(
        parse_yaml(quickstart_config_text(), "quickstart"),
        [
            f"engine.amp={amp}",
            "train.epochs=1",
            "scenario.increment=5",
            "scenario.initial_increment=5",
        ]
        + ["engine.progress=none", "engine.tensorboard=false"],
    )
    feature_amps = []
    original = FeatureCache.get

    def recording_get(self, *args, **kwargs):
        feature_amps.append(kwargs.get("amp"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(FeatureCache, "get", recording_get)
    seen = {True: set(), False: set()}  # module.training -> conv output dtypes
    conv_forward = torch.nn.Conv2d.forward

    def recording_forward(self, x):
        out = conv_forward(self, x)
        seen[self.training].add(out.dtype)
        return out

    monkeypatch.setattr(torch.nn.Conv2d, "forward", recording_forward)
    Trainer(cfg, tmp_path / "run", log=None).fit()

    assert seen[True] == {expected}  # training steps
    assert seen[False] == {expected}  # evaluation and feature passes
    assert feature_amps and set(feature_amps) == {None if amp == "auto" else torch.bfloat16}
