"""RIDE: routing diverse distribution-aware experts (long-tailed recognition)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cilkit.backbones.experts import ExpertNet, ExpertRouter
from cilkit.buffers.selection import nme_logits
from cilkit.config.schema import FieldError, LearnerConfig, LossConfig, OptimConfig, SamplerConfig
from cilkit.contract import Batch, StageTime, StepOutput, TaskContext, TrainingStage
from cilkit.data.samplers import create_sampler
from cilkit.learners.base import Learner, register_learner
from cilkit.losses.diversity import diversity_kl
from cilkit.losses.long_tail import LDAMLoss, LDAMLossConfig


@dataclass(frozen=True)
class RIDEConfig(LearnerConfig):
    name: str = "ride"
    num_experts: int = 3
    shared_stages: int = 1
    """Backbone stages shared by every expert, with the stem (ResNet-32: stem + layer1)."""
    reduce_dimension: bool = True
    """Experts at 3/4 of the backbone's widths (ResNet-32: 24 and 48 channels)."""
    s: float = 30.0
    """Fixed scale of the experts' cosine classifiers."""
    max_m: float = 0.5
    """LDAM's largest margin."""
    drw_start_epoch: int | None = 160
    """Deferred re-weighting of the LDAM loss and the diversity temperatures from this epoch."""
    diversity_factor: float = -0.45
    """``additional_diversity_factor``: weight of the KL to the mean; negative rewards
    diversity (-0.45 in the authors' CIFAR-100-LT config; their code's default is -0.2)."""
    diversity_temperature: float = 1.0
    reweight_factor: float = 0.05
    """How much the diversity temperature follows the class prior once re-weighting is on."""
    router: bool = False
    """Train the expert assignment module (RIDE-EA) after the experts, in a second stage."""
    router_epochs: int = 5
    router_lr: float = 0.01
    router_weight_decay: float = 5e-4
    router_top_k: int = 30
    """Largest mean logits the router sees (``top_choices_num``, 30 for CIFAR-100)."""
    router_hidden: int = 16
    router_pos_weight: float = 100.0
    """Weight of the "the next expert helps" class in the router's binary cross-entropy."""

    def __post_init__(self) -> None:
        checks = [
            (self.num_experts >= 1, "num_experts", "must be >= 1"),
            (self.shared_stages >= 0, "shared_stages", "must be >= 0"),
            (self.s > 0, "s", "must be > 0"),
            (self.max_m >= 0, "max_m", "must be >= 0"),
            (self.diversity_temperature > 0, "diversity_temperature", "must be > 0"),
            (0 <= self.reweight_factor < 1, "reweight_factor", "must be in [0, 1)"),
            (not self.router or self.num_experts >= 2, "router", "needs num_experts >= 2"),
            (self.router_epochs >= 0, "router_epochs", "must be >= 0"),
            (self.router_top_k >= 1, "router_top_k", "must be >= 1"),
            (self.router_hidden >= 1, "router_hidden", "must be >= 1"),
            (self.router_pos_weight > 0, "router_pos_weight", "must be > 0"),
            (self.loss == LossConfig(), "loss", "ride's loss is LDAM per expert: set max_m, s"),
            (self.rebalance is None, "rebalance", "is not supported by ride"),
        ]
        for ok, field_name, message in checks:
            if not ok:
                raise FieldError(field_name, message)


@register_learner("ride")
class RIDE(Learner):
    """RIDE (Wang, Lian, Miao, Liu & Yu, ICLR 2021): several distribution-aware, diverse experts.

    "Long-tailed Recognition by Routing Diverse Distribution-Aware Experts". The stem and the
    first ``shared_stages`` stages are shared; each of ``num_experts`` experts has its own later
    stages (at 3/4 width with ``reduce_dimension``) and a cosine classifier times ``s`` (the
    authors' ``NormedLinear``); the prediction is the experts' mean. The loss sums over experts
    LDAM (Cao et al. 2019, with DRW from ``drw_start_epoch``) plus ``diversity_factor`` times
    ``T^2 KL(mean || expert)`` (:func:`cilkit.losses.diversity.diversity_kl`): negative, so
    experts are pushed apart.
    Once DRW is on, ``T`` is per class, ``T (C pi_c f + 1 - f) / max`` with ``pi`` the class
    prior and ``f = reweight_factor``. With ``router`` a second stage trains only RIDE-EA's
    expert assignment module on class-balanced batches, the experts frozen in eval mode: before
    expert ``i + 1`` it predicts whether the experts so far are wrong and a later one is right
    (binary cross-entropy, ``router_pos_weight``); at prediction a sample consults the next
    expert while the router's probability is above 0.5; ``predict`` then reports the routed
    mean as ``cnn`` and the mean of all experts, unrouted, as ``all_experts``.
    ``evaluation_stats`` reports the average number of experts per test sample
    (``num_experts`` without router).

    Details the paper leaves open follow the authors' code (frank-xwang/RIDE-LongTailRecognition,
    ``ride_resnet_cifar.py``, ``ea_resnet_cifar.py``, ``loss.py::RIDELoss``, the CIFAR-100 configs):
    experts initialised independently, the KL target the (detached) mean of all experts, the loss
    summed (not averaged) over experts, LDAM on the mean logits when ``diversity_factor`` is 0,
    the router's input the normalised features and the top-30 mean logits. Differences: the
    router stage uses the run's batch size (authors: 512) and the engine's warm-up
    ``(e + 1) / (w + 1)`` (authors: ``(e + 1) / w``); the optional distillation from a RIDE
    teacher is not implemented. In class-incremental runs every classifier grows with the new
    classes and the router is retrained after each task.
    """

    config_cls = RIDEConfig
    cfg: RIDEConfig

    def __init__(self, cfg, network, memory_cfg, build_backbone=None) -> None:
        if build_backbone is None:
            raise ValueError("RIDE builds one extractor per expert: pass build_backbone")
        network = ExpertNet(
            network.backbone,
            build_backbone,
            cfg.num_experts,
            cfg.shared_stages,
            cfg.reduce_dimension,
            cfg.s,
        )
        super().__init__(cfg, network, memory_cfg, build_backbone)
        self.loss_fn = LDAMLoss(
            LDAMLossConfig(max_m=cfg.max_m, s=cfg.s, drw_start_epoch=cfg.drw_start_epoch)
        )
        self.router = None
        if cfg.router:
            self.router = ExpertRouter(
                cfg.num_experts, network.expert_dim, cfg.router_top_k, cfg.router_hidden
            )
        self._experts_used, self._samples = 0.0, 0

    def diversity_temperature(self) -> torch.Tensor | float:
        """``T``, or once re-weighting is on one temperature per class."""
        if self.loss_fn.weights() is None:
            return self.cfg.diversity_temperature
        prior = self.loss_fn.class_counts / self.loss_fn.class_counts.sum()
        f = self.cfg.reweight_factor
        w = len(prior) * prior * f + 1 - f
        return self.cfg.diversity_temperature * w / w.max()

    def training_step(self, batch: Batch) -> StepOutput:
        _, logits = self.network.forward_experts(batch.x)
        logits = logits.float()
        mean = logits.mean(0)
        factor, temperature = self.cfg.diversity_factor, self.diversity_temperature()
        base = sum(self.loss_fn((mean if factor == 0 else z) / self.cfg.s, batch.y) for z in logits)
        diversity = sum(diversity_kl(z, mean, temperature) for z in logits)
        loss = base + factor * diversity
        return StepOutput(loss, {"ldam": base.detach(), "diversity": diversity.detach()}, mean)

    def stages(self, ctx: TaskContext, when: StageTime) -> list[TrainingStage]:
        stages = super().stages(ctx, when)
        if self.router is not None and when == "after_training" and self.cfg.router_epochs:
            stages.append(self._router_stage())
        return stages

    def router_step(self, batch: Batch) -> StepOutput:
        """The router's loss on a batch: does expert ``i + 1`` turn a wrong answer right?"""
        net, n = self.network, self.network.num_experts
        with torch.no_grad():
            shared = net.trunk(batch.x)
            total, correct, inputs = 0.0, [], []
            for i in range(n):
                features, z = net.forward_expert(shared, i)
                total = total + z.float()
                correct.append(total.argmax(1) == batch.y)
                if i < n - 1:
                    inputs.append((features, total / (i + 1)))
            correct = torch.stack(correct, 1)
            later = torch.stack([correct[:, i + 1 :].any(1) for i in range(n - 1)], 1)
            helps = (~correct[:, :-1] & later).float()
        scores = torch.stack([self.router(f, m, i) for i, (f, m) in enumerate(inputs)], 1)
        weight = scores.new_tensor([self.cfg.router_pos_weight])
        loss = F.binary_cross_entropy_with_logits(scores, helps, pos_weight=weight)
        return StepOutput(loss, {"router": loss.detach()}, total / n)

    def _router_stage(self) -> TrainingStage:
        cfg, network = self.cfg, self.network
        return TrainingStage(
            name="expert router",
            parameters=list(self.router.parameters()),
            epochs=cfg.router_epochs,
            optim=OptimConfig(
                lr=cfg.router_lr,
                nesterov=True,
                weight_decay=cfg.router_weight_decay,
                scheduler="cosine",
            ),
            step=self.router_step,
            when="after_training",
            sampler=create_sampler(SamplerConfig("class_balanced")),
            before_epoch=lambda epoch: network.eval(),
        )

    @torch.no_grad()
    def routed_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean logits of the experts each sample consults, and how many it consults."""
        net = self.network
        shared = net.trunk(x)
        features, out = net.forward_expert(shared, 0)
        out = out.float()
        count = out.new_ones(len(x))
        active = torch.arange(len(x), device=x.device)
        for i in range(1, net.num_experts):
            # Routing is data-dependent control flow: the samples that consult expert i are
            # selected (a host sync per expert), so the others skip its computation.
            go = self.router(features, out[active] / i, i - 1) > 0  # sigmoid > 0.5
            active = active[go]
            if not len(active):
                break
            features, z = net.forward_expert(shared[active], i)
            out[active] += z.float()
            count[active] += 1
        return out / count[:, None], count

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The (routed) experts' mean logits, with a router also every expert's (``all_experts``),
        and NME scores over every expert's features when class means exist."""
        if self.router is not None:
            logits, count = self.routed_logits(x)
            self._experts_used = self._experts_used + count.sum()  # a tensor: no sync per batch
            out = {"cnn": logits, "all_experts": self.network(x).float()}
        else:
            out = {"cnn": self.network(x)}
            self._experts_used = self._experts_used + len(x) * self.network.num_experts
        self._samples += len(x)
        if len(self.class_means) == self.num_seen_classes and self.num_seen_classes:
            features = self.network.forward_features(x).float()
            out["nme"] = nme_logits(features, self.class_means)
        return out

    def reset_evaluation_stats(self) -> None:
        self._experts_used, self._samples = 0.0, 0

    def evaluation_stats(self) -> dict[str, float]:
        """``experts_per_sample``: experts consulted per predicted sample since the reset."""
        if not self._samples:
            return {}
        return {"experts_per_sample": float(self._experts_used) / self._samples}
