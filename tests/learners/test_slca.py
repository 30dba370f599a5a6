"""SLCA: the slow backbone's parameter group, the frozen old head blocks, the class statistics, the
classifier alignment on shrunk Gaussian samples with normalised logits, and the pre-alignment
head the next task trains from."""

from __future__ import annotations

import copy

import pytest
import torch

from cilkit.components import analytic
from cilkit.components.analytic import gaussian_samples
from cilkit.config import build_config
from cilkit.engine.trainer import Trainer
from cilkit.errors import ConfigError
from cilkit.learners import slca as slca_module
from cilkit.learners.slca import SLCA, task_normalized_logits


def _config(*overrides: str):
    data = {
        "seed": 4,
        "data": {"name": "digits"},
        "scenario": {"initial_increment": 4, "increment": 3},
        "backbone": {"name": "convnet4", "hidden": 16},
        "learner": {"name": "slca", "ca_epochs": 2, "ca_samples": 32},
        "optim": {"lr": 0.05, "milestones": [2]},
        "train": {"epochs": 2, "batch_size": 128},
        "engine": {"progress": "none"},
    }
    return build_config(data, list(overrides))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 3-task run; after each task: the trained head, the aligned head, the statistics, and
    the parameter groups and the class means the alignment drew from."""
    records: list[dict] = []
    drawn: list[torch.Tensor] = []
    real_samples = slca_module.gaussian_samples
    with pytest.MonkeyPatch.context() as mp:
        after, configure = SLCA.after_task, SLCA.configure_training
        groups: list = []

        def configure_training(self, ctx):
            out = configure(self, ctx)
            groups.append(out)
            return out

        def after_task(self, ctx):
            head_before = copy.deepcopy(self.network.head.state_dict())
            after(self, ctx)
            records.append(
                {
                    "learner": self,
                    "head_before": head_before,
                    "head": copy.deepcopy(self.network.head.state_dict()),
                    "aligned": copy.deepcopy(self.aligned.state_dict()),
                    "features": self.task_features(ctx),
                    "task": ctx.info.task_id,
                }
            )

        def samples(means, covs, n, generator):
            drawn.append(means.clone())
            return real_samples(means, covs, n, generator)

        mp.setattr(SLCA, "after_task", after_task)
        mp.setattr(SLCA, "configure_training", configure_training)
        mp.setattr(slca_module, "gaussian_samples", samples)
        Trainer(_config(), tmp_path_factory.mktemp("slca"), log=None).fit()
    return {"records": records, "groups": groups, "drawn": drawn}


def test_the_backbone_trains_at_the_slow_rate_and_only_the_newest_head_block_with_it(run):
    for task, groups in enumerate(run["groups"]):
        learner = run["records"][task]["learner"]
        head = learner.network.head
        plain = [p for p in groups if not isinstance(p, dict)]
        (slow,) = [g for g in groups if isinstance(g, dict)]
        assert slow["lr_scale"] == 0.01
        assert {id(p) for p in slow["params"]} == {
            id(p) for p in learner.network.backbone.parameters()
        }
        assert {id(p) for p in plain} == {id(head.weights[task]), id(head.biases[task])}


def test_old_head_blocks_and_the_pre_alignment_head_carry_over(run):
    """The alignment changes a copy: the trained head after a task is the head before its
    alignment; in the next task the old blocks stay as they were."""
    records = run["records"]
    for r in records:
        assert all(torch.equal(r["head"][k], r["head_before"][k]) for k in r["head"])
    for earlier, later in zip(records, records[1:], strict=False):
        for k, v in earlier["head"].items():
            if k.startswith(("weights.", "biases.")):
                assert torch.equal(later["head"][k], v), k


def test_the_aligned_head_classifies_after_the_second_task(run):
    first, *later = run["records"]
    assert all(torch.equal(first["aligned"][k], first["head"][k]) for k in first["head"])
    for r in later:
        moved = [k for k in r["head"] if not torch.equal(r["aligned"][k], r["head"][k])]
        assert {k.split(".")[0] for k in moved} == {"weights", "biases"}
        # the old blocks are aligned too, not only the new one
        assert "weights.0" in moved
    learner = later[-1]["learner"]
    features = torch.randn(5, learner.network.feature_dim)
    expected = learner.aligned(features)
    torch.testing.assert_close(learner.predict_features(features)["cnn"], expected, rtol=0, atol=0)


def test_class_statistics_are_the_authors_mean_and_covariance(run):
    records = run["records"]
    learner = records[-1]["learner"]
    cov = learner.class_covariances()
    start = 0
    for r in records:
        x, y = r["features"]
        for c in torch.unique(y).tolist():
            xc = x[y == c].double()
            torch.testing.assert_close(learner.statistics.means()[c], xc.mean(0))
            reference = torch.cov(xc.T) + 1e-4 * torch.eye(xc.shape[1], dtype=torch.float64)
            torch.testing.assert_close(cov[c], reference)
        start += len(torch.unique(y))
    assert start == learner.num_seen_classes


def test_alignment_draws_around_the_shrunk_means(run):
    """Each class's Gaussian is centred on ``mu_c (0.9 + 0.1 (t_c + 1) / (T + 1))``."""
    learner = run["records"][-1]["learner"]
    drawn = run["drawn"]
    assert len(drawn) == 2 * 2  # tasks 1 and 2, two alignment epochs each
    means = learner.statistics.means()
    task_of = torch.tensor([0] * 4 + [1] * 3 + [2] * 3, dtype=torch.float64)
    expected = means * (0.9 + 0.1 * (task_of + 1) / 3)[:, None]
    torch.testing.assert_close(drawn[-1], expected)
    assert torch.equal(drawn[-1], drawn[-2])  # the same centres in every epoch of a task


def test_task_normalized_logits_is_the_authors_formula():
    logits = torch.randn(6, 7)
    slices = [slice(0, 4), slice(4, 7)]
    out = task_normalized_logits(logits, slices, 0.1)
    for b in range(6):
        norms = [logits[b, s].norm() + 1e-7 for s in slices]
        torch.testing.assert_close(out[b], logits[b] / (sum(norms) / 2) / 0.1)


def test_gaussian_samples_have_the_asked_moments():
    g = torch.Generator().manual_seed(0)
    means = torch.tensor([[1.0, -2.0], [0.0, 3.0]], dtype=torch.float64)
    covs = torch.tensor([[[2.0, 0.6], [0.6, 1.0]], [[0.5, 0.0], [0.0, 0.1]]], dtype=torch.float64)
    x = gaussian_samples(means, covs, 20000, g)
    assert x.shape == (2, 20000, 2)
    for c in range(2):
        torch.testing.assert_close(x[c].mean(0), means[c], atol=0.05, rtol=0)
        torch.testing.assert_close(torch.cov(x[c].T), covs[c], atol=0.06, rtol=0)
    again = gaussian_samples(means, covs, 20000, torch.Generator().manual_seed(0))
    assert torch.equal(x, again)
    assert analytic.gaussian_samples is gaussian_samples


def test_a_bad_option_is_one_line_error():
    with pytest.raises(ConfigError, match="learner.logit_norm"):
        _config("learner.logit_norm=0")
    with pytest.raises(ConfigError, match="learner.backbone_lr_scale"):
        _config("learner.backbone_lr_scale=-1")


def test_plain_cross_entropy_without_logit_norm(tmp_path):
    """``logit_norm: null`` aligns with plain cross-entropy (and still runs end to end)."""
    summary = Trainer(_config("learner.logit_norm=null"), tmp_path, log=None).fit()
    assert summary["last_accuracy"] > 0
