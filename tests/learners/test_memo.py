"""What makes MEMO that method: shared generalised blocks, one specialised block per task."""

from __future__ import annotations

import pytest
import torch
from test_lucir_der_bic import _after_task, _batch, _next_task

from cilkit.backbones import Frozen
from cilkit.config import build_config
from cilkit.engine.build import build_run
from cilkit.errors import ConfigError


def test_memo_shares_frozen_generalised_blocks_and_adds_a_specialised_block(tmp_path):
    parts = _after_task("memo", tmp_path)
    learner = parts.learner
    net = learner.network
    assert not isinstance(net.trunk, Frozen)  # the first task trains the whole backbone
    whole = sum(p.numel() for p in net.trunk.parameters()) + sum(
        p.numel() for p in net.branches[0].parameters()
    )
    ctx = _next_task(parts, 1)
    assert isinstance(net.trunk, Frozen) and len(net.branches) == 2
    assert isinstance(net.branches[0], Frozen) and net.feature_dim == 2 * net.out_dim
    new_branch = sum(p.numel() for p in net.branches[1].parameters())
    assert 0 < new_branch < whole  # a task adds the deep stage only, not a whole extractor
    trunk_state = {k: v.clone() for k, v in net.trunk.state_dict().items()}
    learner.train()
    assert not net.trunk.training and not net.branches[0].training and net.branches[1].training
    out = learner.training_step(_batch(parts, ctx))
    out.loss.backward()
    assert all(p.grad is None for p in net.trunk.parameters())  # no gradient after task 0
    assert all(p.grad is None for p in net.branches[0].parameters())
    assert all(p.grad is not None for p in net.branches[1].parameters())
    for key, value in net.trunk.state_dict().items():  # running statistics did not move
        assert torch.equal(value, trunk_state[key]), key


def test_memo_train_base_keeps_training_the_generalised_blocks(tmp_path):
    parts = _after_task("memo", tmp_path, 0, "learner.train_base=true")
    learner = parts.learner
    ctx = _next_task(parts, 1)
    assert not isinstance(learner.network.trunk, Frozen)
    learner.training_step(_batch(parts, ctx)).loss.backward()
    assert all(p.grad is not None for p in learner.network.trunk.parameters())


def test_memo_checkpoint_rebuilds_the_frozen_trunk_and_branches(tmp_path):
    from test_contract import tiny

    from cilkit.engine.checkpoint import latest_checkpoint, load_checkpoint
    from cilkit.engine.trainer import Trainer

    cfg = tiny("memo")
    Trainer(cfg, tmp_path, log=None).fit(stop_after_task=1)
    fresh = Trainer(cfg, tmp_path, log=None).setup().learner
    fresh.load_state_dict(load_checkpoint(latest_checkpoint(tmp_path / "checkpoints"))["learner"])
    assert isinstance(fresh.network.trunk, Frozen) and len(fresh.network.branches) == 2


@pytest.mark.parametrize("shared", [3, 5, -3, -5])
def test_a_split_outside_the_backbone_is_refused_in_one_line(shared):
    """ResNet-32 has 3 stages: 1, 2, -1 and -2 leave a trunk and a specialised part; nothing
    else does (-5 used to wrap around to 1)."""
    cfg = build_config(
        {
            "data": {"name": "digits"},
            "backbone": {"name": "resnet32"},
            "learner": {"name": "memo", "shared_stages": shared},
            "memory": {"memory_size": 40},
        }
    )
    with pytest.raises(ConfigError, match=r"^learner\.shared_stages: .* 3 stages: use 1 to 2"):
        build_run(cfg)
