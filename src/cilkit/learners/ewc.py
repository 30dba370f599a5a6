"""EWC: elastic weight consolidation, and its online variant."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from cilkit.config.schema import FieldError, LearnerConfig
from cilkit.contract import Batch, StepOutput, TaskContext
from cilkit.learners.base import Learner, register_learner


@dataclass(frozen=True)
class EWCConfig(LearnerConfig):
    name: str = "ewc"
    ewc_lambda: float = 1000.0
    """Weight of the quadratic penalty (PyCIL: 1000)."""
    fisher_max: float | None = 1e-4
    """Clamp the Fisher diagonal from above (PyCIL: 1e-4); None = no clamp."""
    merge: Literal["average", "online"] = "average"
    """How a task's Fisher joins the earlier ones: ``average`` weights them by old / seen
    classes (PyCIL); ``online`` is Schwarz et al.'s ``gamma * F_old + F_new``."""
    gamma: float = 1.0
    """Decay of the earlier Fisher in the online variant."""
    new_classes_only: bool = True
    """Cross-entropy over the new classes' logits only (PyCIL's class-incremental EWC)."""

    def __post_init__(self) -> None:
        if self.ewc_lambda < 0:
            raise FieldError("ewc_lambda", "must be >= 0")
        if not 0 < self.gamma <= 1:
            raise FieldError("gamma", "must be in (0, 1]")


class _Anchor(nn.Module):
    """The previous optimum and the Fisher diagonal of every parameter, as buffers (named with
    the parameter's dots replaced), created from a state dict's keys when one is loaded."""

    def set(self, name: str, mean: torch.Tensor, fisher: torch.Tensor) -> None:
        key = name.replace(".", "__")
        self.register_buffer(f"mean__{key}", mean)
        self.register_buffer(f"fisher__{key}", fisher)

    def items(self) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        names = [n[len("mean__") :] for n, _ in self.named_buffers() if n.startswith("mean__")]
        return [
            (n.replace("__", "."), getattr(self, f"mean__{n}"), getattr(self, f"fisher__{n}"))
            for n in names
        ]

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args) -> None:
        for key, value in state_dict.items():
            if key.startswith(prefix) and not hasattr(self, key[len(prefix) :]):
                self.register_buffer(key[len(prefix) :], torch.empty_like(value))
        super()._load_from_state_dict(state_dict, prefix, *args)


@register_learner("ewc")
class EWC(Learner):
    """EWC (Kirkpatrick et al., PNAS 2017): a Fisher-weighted penalty to the previous optimum.

    A quadratic penalty keeps the parameters near the previous optimum, weighted by their
    diagonal Fisher information; no exemplars.

    After each task, the Fisher diagonal is the mean over the task's training batches of the
    squared gradient of the cross-entropy (the empirical Fisher of PyCIL's and FACIL's code),
    clamped at ``fisher_max``, and merged with the earlier one (``merge``); it is computed with
    the network in eval mode (PyCIL's train mode also moves the BatchNorm statistics). The loss is the
    classification loss plus ``ewc_lambda / 2 * sum F (theta - theta*)^2``. Head rows added
    after the optimum was stored (new classes) have no anchor and are not penalised; a new
    task's rows of an anchored parameter get the new task's Fisher only. It differs from
    ``finetune`` by that penalty alone.
    """

    config_cls = EWCConfig
    cfg: EWCConfig
    uses_memory = False

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.anchor = _Anchor()

    def training_step(self, batch: Batch) -> StepOutput:
        features, logits = self.forward_train(batch.x)
        scores = self.new_classes_only(logits) if self.cfg.new_classes_only else logits
        ce = self.classification_loss(scores, batch.y, features)
        if not len(list(self.anchor.buffers())):
            return StepOutput(ce, {"ce": ce.detach()}, logits)
        penalty = self.penalty()
        loss = ce + self.cfg.ewc_lambda * penalty
        return StepOutput(loss, {"ce": ce.detach(), "ewc": penalty.detach()}, logits)

    def penalty(self) -> torch.Tensor:
        """``1/2 sum F (theta - theta*)^2`` over the anchored part of every parameter."""
        params = dict(self.network.named_parameters())
        total = torch.zeros((), device=self.class_means.device)
        for name, mean, fisher in self.anchor.items():
            p = params[name]
            rows = tuple(slice(0, n) for n in mean.shape)
            total = total + (fisher * (p[rows] - mean).pow(2)).sum() / 2
        return total

    def after_task(self, ctx: TaskContext) -> None:
        super().after_task(ctx)
        fisher = self._fisher(ctx)
        old = {name: f for name, _, f in self.anchor.items()}
        for name, p in self.network.named_parameters():
            if name not in fisher:
                continue
            new = fisher[name]
            if name in old:
                prev = old[name]
                rows = tuple(slice(0, n) for n in prev.shape)
                merged = new.clone()
                if self.cfg.merge == "online":
                    merged[rows] = self.cfg.gamma * prev + new[rows]
                else:
                    alpha = self.num_old_classes / self.num_seen_classes
                    merged[rows] = alpha * prev + (1 - alpha) * new[rows]
                new = merged
            self.anchor.set(name, p.detach().clone(), new)

    def _fisher(self, ctx: TaskContext) -> dict[str, torch.Tensor]:
        """The empirical Fisher diagonal on the task's data (mean of squared batch gradients)."""
        params = {n: p for n, p in self.network.named_parameters() if p.requires_grad}
        fisher = {n: torch.zeros_like(p) for n, p in params.items()}
        was = self.network.training
        self.network.eval()  # running statistics are used, not updated (PyCIL's train mode
        batches = 0  # would move them after training)
        for batch in ctx.train.eval_batches(ctx.indices, ctx.batch_size):
            self.network.zero_grad(set_to_none=True)
            logits = self.network(batch.x)
            scores = self.new_classes_only(logits) if self.cfg.new_classes_only else logits
            F.cross_entropy(scores.float(), batch.y).backward()
            for n, p in params.items():
                if p.grad is not None:
                    fisher[n] += p.grad.detach().pow(2)
            batches += 1
        self.network.zero_grad(set_to_none=True)
        self.network.train(was)
        for n in fisher:
            fisher[n] /= max(batches, 1)
            if self.cfg.fisher_max is not None:
                fisher[n].clamp_(max=self.cfg.fisher_max)
        return fisher
