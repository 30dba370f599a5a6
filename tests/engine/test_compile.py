"""``engine.compile``: every feature extractor a method trains is compiled, including those it
builds after the first task, and no task after the second compiles anything new (the growing
head and the added branches do not force recompilation).

Dynamo runs with its ``eager`` backend here: what is checked is what gets compiled and how
often, not inductor's code (which would take minutes on the CPU)."""

from __future__ import annotations

import pytest
import torch
from fast_options import fast_overrides
from torch import nn

from cilkit.backbones import is_compiled, unfrozen
from cilkit.config import build_config
from cilkit.engine.trainer import Trainer
from cilkit.learners import LEARNERS, Learner


def _extractors(network: nn.Module) -> dict[str, nn.Module]:
    """The modules ``forward_features`` runs: the backbone, or the trunk and every branch."""
    if hasattr(network, "branches"):
        out = {f"branches.{i}": unfrozen(b) for i, b in enumerate(network.branches)}
        if not isinstance(unfrozen(network.trunk), nn.Identity):
            out["trunk"] = unfrozen(network.trunk)
        return out
    return {"backbone": unfrozen(network.backbone)}


@pytest.mark.parametrize("name", ["icarl", "der", "memo", "foster"])
def test_every_extractor_is_compiled_and_later_tasks_compile_nothing(name, tmp_path, monkeypatch):
    from torch._dynamo.utils import counters

    compile_ = nn.Module.compile
    monkeypatch.setattr(nn.Module, "compile", lambda self, **kw: compile_(self, backend="eager"))
    graphs: list[int] = []
    uncompiled: list[list[str]] = []
    after_task = Learner.after_task

    def watched(self, ctx):
        after_task(self, ctx)
        graphs.append(counters["stats"]["unique_graphs"])
        uncompiled.append([k for k, m in _extractors(self.network).items() if not is_compiled(m)])

    monkeypatch.setattr(Learner, "after_task", watched)
    torch._dynamo.reset()
    counters.clear()
    learner = LEARNERS.get(name).obj
    data = {
        "seed": 0,
        "data": {"name": "digits"},
        "scenario": {"initial_increment": 4, "increment": 2},
        "backbone": {"name": "resnet32" if name == "memo" else "convnet4", "hidden": 16},
        "learner": {"name": name},
        "train": {"epochs": 1, "batch_size": 100},
        "engine": {"progress": "none", "compile": True},
        "memory": {"memory_size": 40} if learner.uses_memory else {},
    }
    if name == "memo":
        del data["backbone"]["hidden"]
    try:
        Trainer(build_config(data, fast_overrides(name)), tmp_path, log=None).fit()
    finally:
        torch._dynamo.reset()
    assert len(graphs) == 4
    assert uncompiled == [[]] * 4, uncompiled
    assert graphs[0] > 0
    assert graphs[1] == graphs[2] == graphs[3], graphs
