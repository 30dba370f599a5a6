"""The prototype and analytic methods on a frozen backbone (SimpleCIL, FeCAM, ACIL, DS-AL,
RanPAC): each classifier against a closed-form reference on the features the learner saw, the
backbone's weights across tasks, and ``predict`` against the evaluation hooks."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F
from fast_options import fast_overrides

from cilkit.backbones.network import unfrozen
from cilkit.components.analytic import normalize_covariance, one_hot, select_ridge
from cilkit.config import build_config
from cilkit.contract import task_generator
from cilkit.engine.trainer import Trainer
from cilkit.errors import ConfigError
from cilkit.learners import LEARNERS
from cilkit.learners.frozen_backbone import FrozenBackboneLearner

NAMES = ["simplecil", "fecam", "acil", "dsal", "ranpac"]


def config(name: str, *overrides: str, backbone: dict | None = None):
    data = {
        "seed": 3,
        "data": {"name": "digits"},
        "scenario": {"initial_increment": 4, "increment": 3},
        "backbone": backbone or {"name": "convnet4", "hidden": 16},
        "learner": {"name": name},
        "optim": {"lr": 0.05, "milestones": [2]},
        "train": {"epochs": 2, "batch_size": 128},
        "engine": {"progress": "none"},
    }
    return build_config(data, [*fast_overrides(name), *overrides])


@dataclass
class Run:
    """A finished run, the learner in its final state, and per task: the features and labels
    the learner read (``task_features``) and the backbone's weights after ``after_task``."""

    learner: FrozenBackboneLearner
    parts: object
    features: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    backbones: list[dict[str, torch.Tensor]] = field(default_factory=list)
    initial: dict[str, torch.Tensor] = field(default_factory=dict)


def _state(learner) -> dict[str, torch.Tensor]:
    return {
        k: v.detach().clone() for k, v in unfrozen(learner.network.backbone).state_dict().items()
    }


def run(name: str, tmp_path, *overrides: str, backbone: dict | None = None) -> Run:
    cls = LEARNERS.get(name).obj
    holder: dict = {}

    class Recording(Trainer):
        def setup(self, dist=None):
            parts = super().setup(dist)
            holder["run"] = Run(parts.learner, parts, initial=_state(parts.learner))
            return parts

    task_features, after_task = FrozenBackboneLearner.task_features, cls.after_task

    def recorded_features(self, ctx):
        out = task_features(self, ctx)
        holder["run"].features.append(tuple(t.detach().clone() for t in out))
        return out

    def recorded_after_task(self, ctx):
        after_task(self, ctx)
        holder["run"].backbones.append(_state(self))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FrozenBackboneLearner, "task_features", recorded_features)
        patch.setattr(cls, "after_task", recorded_after_task)
        Recording(config(name, *overrides, backbone=backbone), tmp_path, log=None).fit()
    return holder["run"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    cache: dict = {}

    def get(name: str, *overrides: str) -> Run:
        if (name, overrides) not in cache:
            cache[name, overrides] = run(name, tmp_path_factory.mktemp(name), *overrides)
        return cache[name, overrides]

    return get


def seen(r: Run) -> tuple[torch.Tensor, torch.Tensor]:
    """Every training feature and label the learner read, over all tasks."""
    return torch.cat([f for f, _ in r.features]).double(), torch.cat([y for _, y in r.features])


def ridge(X: torch.Tensor, Y: torch.Tensor, gamma: float) -> torch.Tensor:
    eye = torch.eye(X.shape[1], dtype=torch.float64, device=X.device)
    return torch.linalg.solve(X.T @ X + gamma * eye, X.T @ Y)


def test_simplecil_prototypes_are_the_class_means_of_all_training_features(runs):
    r = runs("simplecil")
    train = r.parts.train
    for c in range(10):
        idx = train.indices_of([c])
        features = train.embed(idx, r.learner.network.forward_features)  # recomputed here
        torch.testing.assert_close(
            r.learner.prototypes.means()[c].float(), features.mean(0), rtol=1e-4, atol=1e-5
        )
    assert r.learner.prototypes.counts.tolist() == [len(train.indices_of([c])) for c in range(10)]
    features, labels = seen(r)
    means = torch.stack([features[labels == c].mean(0) for c in range(10)])
    torch.testing.assert_close(r.learner.prototypes.means(), means, rtol=1e-12, atol=1e-12)
    x = features[:7].float()
    cosine = F.normalize(x.double(), dim=1) @ F.normalize(means, dim=1).T
    torch.testing.assert_close(r.learner.predict_features(x)["cnn"], cosine)


@pytest.mark.parametrize("name", ["acil", "dsal"])
def test_the_analytic_main_stream_is_the_joint_ridge_solution_on_all_data_seen(runs, name):
    r = runs(name)
    learner = r.learner
    features, labels = seen(r)
    X = torch.relu(learner.buffer.linear(features))  # ACIL's ReLU buffer; DS-AL's main stream
    reference = ridge(X, one_hot(labels, 10), learner.cfg.gamma)
    torch.testing.assert_close(learner.classifier.weight, reference, rtol=1e-8, atol=1e-10)
    assert learner.buffer.weight.shape == (16, 64)
    assert learner.buffer.weight.abs().max() <= 16**-0.5  # nn.Linear's U(+-1/sqrt(d))


def test_dsal_compensation_stream_fits_the_main_streams_cleansed_residuals(runs):
    """With one batch per task (the paper's form) the compensation stream is the joint ridge
    solution of tanh(X) against each task's residuals under the main stream fitted up to that
    task, the old classes' columns zeroed (previous label cleansing)."""
    r = runs("dsal", "learner.fit_batch_size=100000")
    learner = r.learner
    inputs, targets, main_x, main_y = [], [], [], []
    for features, labels in r.features:
        X = learner.buffer.linear(features.double())
        Y = one_hot(labels, 10)
        main_x.append(torch.relu(X))
        main_y.append(Y)
        main = ridge(torch.cat(main_x), torch.cat(main_y), learner.cfg.gamma)
        residual = Y - torch.relu(X) @ main
        residual[:, : int(labels.min())] = 0
        inputs.append(torch.tanh(X))
        targets.append(residual)
    reference = ridge(torch.cat(inputs), torch.cat(targets), learner.cfg.gamma_comp)
    torch.testing.assert_close(learner.compensation.weight, reference, rtol=1e-8, atol=1e-10)
    x = r.features[0][0][:5]
    X = learner.buffer.linear(x.double())
    expected = torch.relu(X) @ main + learner.cfg.compensation_ratio * torch.tanh(X) @ reference
    torch.testing.assert_close(learner.predict_features(x)["cnn"], expected, rtol=1e-8, atol=1e-9)


def test_ranpac_is_the_ridge_classifier_of_all_data_seen_with_the_authors_ridge(runs):
    r = runs("ranpac")
    learner = r.learner
    seed = 3  # config()'s
    W = torch.randn(16, 64, generator=task_generator(seed, 0), dtype=torch.float64)
    assert torch.equal(learner.projection.weight.cpu(), W)  # N(0, 1), drawn once in task 0
    chosen = []
    for t, (features, labels) in enumerate(r.features):  # the authors' search, replayed
        g = task_generator(seed, t)
        if t == 0:
            torch.randn(16, 64, generator=g, dtype=torch.float64)
        H = torch.relu(features.double() @ W)
        order = torch.randperm(len(H), generator=g)
        chosen.append(select_ridge(H[order], one_hot(labels, 10)[order])[0])
    assert learner.chosen_ridges.tolist() == chosen
    features, labels = seen(r)
    H = torch.relu(features @ W)
    reference = ridge(H, one_hot(labels, 10), chosen[-1])
    torch.testing.assert_close(learner.output_weight, reference, rtol=1e-8, atol=1e-10)


def test_fecam_distance_is_the_mahalanobis_distance_of_the_authors_statistics(runs):
    """Each class's covariance from numpy's formula on Tukey-transformed features, shrunk
    twice, normalised and inverted explicitly; the test feature and prototype transformed and
    re-normalised, as the authors' ``_mahalanobis``."""
    r = runs("fecam")
    learner = r.learner
    features, labels = seen(r)
    x = features[:6].float()
    got = -learner.predict_features(x)["cnn"].double()
    q = F.normalize(F.normalize(x.double(), dim=1).sqrt(), dim=1)
    for c in range(10):
        members = features[labels == c]
        t = members.sqrt()
        cov = (t - t.mean(0)).T @ (t - t.mean(0)) / (len(t) - 1)
        for _ in range(2):
            d = cov.shape[0]
            eye = torch.eye(d, dtype=cov.dtype)
            off = cov * (1 - eye)
            cov = cov + cov.diagonal().mean() * eye + off.sum() / (off != 0).sum() * (1 - eye)
        inverse = torch.linalg.inv(normalize_covariance(cov))
        mu = F.normalize(members.mean(0).sqrt(), dim=0)
        for i in range(len(x)):
            diff = q[i] - mu
            assert got[i, c].item() == pytest.approx((diff @ inverse @ diff).item(), rel=2e-4)


def test_fecam_classifies_the_first_task_by_the_trained_heads_weights(tmp_path):
    r = run("fecam", tmp_path, "scenario.initial_increment=10")  # one task only
    x = r.features[0][0][:8]
    weights = F.normalize(r.learner.network.head.weight.detach(), dim=1)
    expected = -(F.normalize(x, dim=1)[:, None] - weights[None]).square().sum(-1)
    torch.testing.assert_close(r.learner.predict_features(x)["cnn"], expected)
    assert torch.equal(expected.argmax(1), r.learner.network.head(x).argmax(1))  # the cosine head


@pytest.mark.parametrize(
    ("name", "overrides", "trained"),
    [
        ("simplecil", (), False),
        ("fecam", ("learner.pretrained=true",), False),
        ("ranpac", (), False),
        ("acil", (), True),
        ("dsal", (), True),
        ("fecam", (), True),
    ],
)
def test_only_the_declared_parameters_change(runs, name, overrides, trained):
    """Frozen from the start: the backbone is bit-identical in every task; trained on the
    first task: it changed there and is bit-identical from then on."""
    r = runs(name, *overrides)
    states = [r.initial, *r.backbones]
    first = 1 if trained else 0
    for state in states[first + 1 :]:
        for key, value in states[first].items():
            assert torch.equal(value, state[key]), key
    changed = any(not torch.equal(v, r.backbones[0][k]) for k, v in r.initial.items())
    assert changed == trained
    assert not any(p.requires_grad for p in r.learner.network.backbone.parameters())
    assert r.learner.evaluation_extractor() is r.learner.network.backbone


@pytest.mark.parametrize("name", NAMES)
def test_predict_is_predict_features_of_the_evaluation_extractor(runs, name):
    r = runs(name)
    learner = r.learner.eval()
    x = next(r.parts.test.eval_batches(torch.arange(50), 50)).x
    extractor = learner.evaluation_extractor()
    with torch.no_grad():
        expected = learner.predict_features(extractor(x))
    got = learner.predict(x)
    assert list(got) == ["cnn"] and torch.equal(got["cnn"], expected["cnn"])
    assert got["cnn"].shape == (50, 10)


@pytest.mark.parametrize("name", NAMES)
def test_each_training_image_is_read_once_and_un_augmented(runs, name):
    r = runs(name)
    positions = torch.cat(
        [
            r.parts.train.indices_of(r.parts.train_scenario.task_info(t).new_classes)
            for t in range(3)
        ]
    )
    assert sum(len(f) for f, _ in r.features) == len(positions)  # each task's new classes once
    assert r.learner.feature_cache.computed == len(positions)
    assert r.learner.stored_samples() == 0 and r.learner.memory is None


def test_ranpac_adapts_a_peft_module_on_the_first_task_then_projects_the_adapted_features(
    tmp_path,
):
    """``adapt``: the adapter and the cosine head train on task 0 (the ViT's own weights never),
    then the adapted model is frozen; every task's ridge statistics, the first one's included,
    are of the adapted features (the authors' ``setup_RP`` and ``replace_fc`` after training)."""
    pytest.importorskip("timm")
    from fast_options import TINY_VIT

    r = run("ranpac", tmp_path, TINY_VIT, "learner.adapt=true")
    learner = r.learner
    vit = {k: v for k, v in r.initial.items() if k.startswith("model.")}
    assert vit and all(torch.equal(v, s[k]) for s in r.backbones for k, v in vit.items())
    adapter = [k for k in r.initial if k.startswith("peft.")]
    assert any(not torch.equal(r.initial[k], r.backbones[0][k]) for k in adapter)
    assert all(torch.equal(r.backbones[0][k], s[k]) for s in r.backbones[1:] for k in adapter)
    assert learner.backbone_frozen
    assert not any(p.requires_grad for p in learner.network.backbone.parameters())
    for t, (features, _) in enumerate(r.features):  # the frozen adapted model's features
        idx = r.parts.train.indices_of(r.parts.train_scenario.task_info(t).new_classes)
        with torch.no_grad():
            now = torch.cat(
                [learner.network.backbone(b.x) for b in r.parts.train.eval_batches(idx, 256)]
            )
        torch.testing.assert_close(now, features, rtol=1e-5, atol=1e-6)
        if t == 0:  # the adapter changed what the pre-trained model computes
            with learner.network.backbone.module.peft.disabled(), torch.no_grad():
                plain = learner.network.backbone(next(r.parts.train.eval_batches(idx, 16)).x)
            assert not torch.allclose(plain, now[:16], atol=1e-4)
    features, labels = seen(r)
    H = learner.projection(features)
    reference = ridge(H, one_hot(labels, 10), learner.chosen_ridges[-1].item())
    # 64 projections of 24-wide features: a rank-deficient Gram matrix, so summing it per task
    # or at once differs in the last digits of a small ridge's solution
    torch.testing.assert_close(learner.output_weight, reference, rtol=1e-5, atol=1e-7)


def test_ranpac_names_a_peft_module_only_when_it_adapts():
    with pytest.raises(ConfigError, match="learner.peft=ssf: tunes a module only with adapt: true"):
        config("ranpac", "learner.peft=ssf")


TIMM = {
    "name": "timm",
    "model": "vit_tiny_patch16_224",
    "kwargs": {"img_size": 32, "patch_size": 8, "depth": 2},
}


@pytest.mark.parametrize("name", ["simplecil", "ranpac"])
def test_simplecil_and_ranpac_on_a_timm_vit(tmp_path, name):
    pytest.importorskip("timm")
    r = run(name, tmp_path, backbone=TIMM)
    features, labels = seen(r)
    assert features.shape[1] == r.learner.network.feature_dim == 192
    if name == "simplecil":
        means = torch.stack([features[labels == c].mean(0) for c in range(10)])
        torch.testing.assert_close(r.learner.prototypes.means(), means)
    else:
        H = r.learner.projection(features)
        reference = ridge(H, one_hot(labels, 10), r.learner.chosen_ridges[-1].item())
        torch.testing.assert_close(r.learner.output_weight, reference, rtol=1e-8, atol=1e-10)
    for state in r.backbones:
        assert all(torch.equal(v, state[k]) for k, v in r.initial.items())


def test_fecam_refuses_tukey_on_a_vits_negative_features(tmp_path):
    pytest.importorskip("timm")
    overrides = ("learner.pretrained=true", "scenario.initial_increment=10")
    with pytest.raises(ConfigError, match="tukey_beta=null"):
        run("fecam", tmp_path / "a", *overrides, backbone=TIMM)
    vit = ("learner.tukey_beta=null", "learner.shrink_alpha2=0", "learner.shrink_repeats=1")
    vit += ("learner.normalize_features=true", "learner.renormalize=false")
    r = run("fecam", tmp_path / "b", *overrides, *vit, backbone=TIMM)
    x = F.normalize(r.features[0][0][:4].double(), dim=1)
    assert r.learner.prototypes.means()[0].norm() < 1  # the mean of normalised features
    assert torch.isfinite(r.learner.predict_features(x.float())["cnn"]).all()
