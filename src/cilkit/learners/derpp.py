"""DER++: dark experience replay with a reservoir of inputs, labels and logits."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cilkit.buffers.selection import reservoir_slots
from cilkit.config.schema import FieldError, LearnerConfig
from cilkit.contract import Batch, StepOutput, TaskContext
from cilkit.learners.base import Learner, register_learner


@dataclass(frozen=True)
class DERPPConfig(LearnerConfig):
    name: str = "derpp"
    alpha: float = 0.1
    """Weight of the logit-matching term (MSE to the stored logits)."""
    beta: float = 0.5
    """Weight of the label term (cross-entropy on a second replay sample); 0 = DER."""
    minibatch_size: int = 0
    """Samples per replay draw (each of the two, shared by the processes under torchrun);
    0 = as many as the batch (Mammoth's default: the training batch size)."""

    def __post_init__(self) -> None:
        for key in ("alpha", "beta", "minibatch_size"):
            if getattr(self, key) < 0:
                raise FieldError(key, "must be >= 0")


class LogitReservoir(nn.Module):
    """A reservoir buffer of dataset positions and the logits the network gave them when
    they were stored (the images themselves stay in the split, un-augmented).

    Every part is a buffer, so it is saved with the learner and, under torchrun, each process
    keeps its own during a task (its shard of the stream) and takes rank 0's at the task's end.
    Logits stored while fewer classes were known keep their width in ``width``; wider rows are
    zero-padded when the head grows.
    """

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.register_buffer("index", torch.full((capacity,), -1, dtype=torch.long))
        self.register_buffer("logits", torch.zeros(capacity, 0))
        self.register_buffer("width", torch.zeros(capacity, dtype=torch.long))
        self.register_buffer("num_seen", torch.zeros((), dtype=torch.long))

    def __len__(self) -> int:
        return min(int(self.num_seen), self.capacity)

    def indices(self) -> torch.Tensor:
        """Stored dataset positions (CPU), in slot order."""
        return self.index[: len(self)].cpu()

    def widen(self, num_classes: int) -> None:
        """Room for ``num_classes`` logits per row (new columns zero, width unchanged)."""
        extra = num_classes - self.logits.shape[1]
        if extra > 0:
            self.logits = F.pad(self.logits, (0, extra))

    @torch.no_grad()
    def add(self, slots: torch.Tensor, index: torch.Tensor, logits: torch.Tensor) -> None:
        """Write the batch items that ``slots`` keeps (``reservoir_slots``) and count them all."""
        keep = slots >= 0
        dest = slots[keep].to(self.index.device)
        self.index[dest] = index[keep.cpu()].to(self.index.device)
        rows = logits[keep.to(logits.device)].float()
        self.logits[dest] = F.pad(rows, (0, self.logits.shape[1] - rows.shape[1]))
        self.width[dest] = rows.shape[1]
        self.num_seen += len(slots)


@register_learner("derpp")
class DERPP(Learner):
    """DER++ (Buzzega et al., NeurIPS 2020): dark experience replay (not the expandable DER).

    Buzzega et al., "Dark Experience for General Continual Learning: a Strong, Simple
    Baseline". The memory is a reservoir over the whole stream (``memory.selection:
    reservoir``, ``memory.memory_size`` slots), updated at every training step with the batch's
    samples and the logits the network gave them. Each step adds to the cross-entropy of the
    batch ``alpha`` times the mean squared error between the network's logits and the stored
    ones on one replay sample, and ``beta`` times the cross-entropy on a second, independently
    drawn replay sample (``beta`` = 0 is DER). Replay samples are drawn without replacement and
    re-augmented, as the authors' code (Mammoth's ``derpp.py``) does. The defaults are the
    paper's seq-CIFAR-10 values for a buffer of 200 (alpha 0.1, beta 0.5; SGD lr 0.03,
    batch 32).

    Where Mammoth's network has every class's output from the start, cilkit's head grows:
    a stored row has the logits of the classes known when it was stored, and the MSE is taken
    on those columns only (the future classes' untrained outputs are not matched). Under
    torchrun each process replays from the reservoir of its own shard of the stream; at the end
    of a task every process takes rank 0's. Differs from ``finetune`` by the reservoir and its
    two replay terms; the herding exemplar memory is not used.
    """

    config_cls = DERPPConfig
    cfg: DERPPConfig
    needs_memory = True
    uses_memory = True
    memory_selection = "reservoir"

    def __init__(self, cfg, network, memory_cfg, build_backbone=None) -> None:
        super().__init__(cfg, network, memory_cfg, build_backbone)
        self.memory = None  # the reservoir below replaces the exemplar memory
        self.buffer = LogitReservoir(memory_cfg.memory_size or 0)
        self._split = None

    def stored_samples(self) -> int:
        return len(self.buffer)

    def train_indices(self, ctx: TaskContext) -> torch.Tensor:
        return ctx.new_indices()  # replay comes from the reservoir, step by step

    def before_task(self, ctx: TaskContext) -> None:
        super().before_task(ctx)
        self.buffer.widen(ctx.info.num_seen_classes)

    def before_training(self, ctx: TaskContext, indices: torch.Tensor) -> None:
        super().before_training(ctx, indices)
        self._split = ctx.train  # where the stored positions' images are

    def transform_batch(self, batch: Batch, generator: torch.Generator) -> Batch:
        """Draw the two replay samples and where the batch's items go in the reservoir."""
        stored = len(self.buffer)
        if stored:
            wanted = self.cfg.minibatch_size // self._split.world_size or len(batch.y)
            m = min(max(wanted, 1), stored)
            for key in ("mse", "ce"):
                slots = torch.randperm(stored, generator=generator, device=generator.device)
                slots = slots[:m].cpu()  # positions in the host-side reservoir
                replay = self._split.augmented(self.buffer.indices()[slots], generator)
                batch.extra[key] = (replay, slots)
        batch.extra["slots"] = reservoir_slots(
            int(self.buffer.num_seen), len(batch.y), self.buffer.capacity, generator
        )
        return batch

    def training_step(self, batch: Batch) -> StepOutput:
        features, logits = self.forward_train(batch.x)
        ce = self.classification_loss(logits, batch.y, features)
        loss, terms = ce, {"ce": ce.detach()}
        if "mse" in batch.extra:
            replay, slots = batch.extra["mse"]
            out = self.network(replay.x).float()
            slots = slots.to(out.device)
            stored, width = self.buffer.logits[slots], self.buffer.width[slots, None]
            valid = torch.arange(out.shape[1], device=out.device) < width  # stored columns
            mse = ((out - stored) ** 2 * valid).sum() / valid.sum().clamp(min=1)
            replay, _ = batch.extra["ce"]
            replay_ce = self.classification_loss(self.network(replay.x), replay.y)
            loss = loss + self.cfg.alpha * mse + self.cfg.beta * replay_ce
            terms |= {"mse": mse.detach(), "replay_ce": replay_ce.detach()}
        self.buffer.add(batch.extra["slots"], batch.index, logits.detach())
        return StepOutput(loss, terms, logits)

    def after_task(self, ctx: TaskContext) -> None:
        """Nothing to select: the reservoir was filled while training."""
