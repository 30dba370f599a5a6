"""IL2M: class-incremental learning with dual memory."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cilkit.contract import TaskContext
from cilkit.learners.base import Learner, register_learner


@register_learner("il2m")
class IL2M(Learner):
    """IL2M (Belouadah & Popescu, ICCV 2019): replay with old-class score rectification.

    Replay, plus a second memory of statistics that rectifies old classes' scores at prediction.

    Training is replay (cross-entropy over every seen class on new data and exemplars). After
    each task, on its training data in eval mode, it stores each new class's mean score in its
    own state (its "initial" mean), each old class's mean score now (on its exemplars), and the
    model's confidence (the mean top score on the new data). At prediction, when the top score
    of a sample is a new class's, every old class ``o``'s score is multiplied by
    ``init_o / current_o * confidence_now / confidence_of_o's_task``; new classes' scores are
    never changed. Scores are softmax probabilities, as in the authors' code (FACIL rectifies
    raw logits). ``predict`` reports the raw (``cnn``) and rectified (``il2m``) classifiers.
    """

    needs_memory = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("init_mean", torch.zeros(0))
        self.register_buffer("current_mean", torch.zeros(0))
        self.register_buffer("confidence", torch.zeros(0))

    def after_task(self, ctx: TaskContext) -> None:
        self._statistics(ctx)
        super().after_task(ctx)

    @torch.no_grad()
    def _statistics(self, ctx: TaskContext) -> None:
        seen, old = self.num_seen_classes, self.num_old_classes
        sums = torch.zeros(seen, device=self.class_means.device)
        counts = torch.zeros(seen, device=self.class_means.device)
        top, new_samples = torch.zeros((), device=sums.device), 0
        was = self.network.training
        self.network.eval()
        for batch in ctx.train.eval_batches(ctx.indices, ctx.batch_size):
            scores = F.softmax(self.network(batch.x).float(), dim=1)
            mine = scores.gather(1, batch.y[:, None]).squeeze(1)
            sums.index_add_(0, batch.y, mine)
            counts.index_add_(0, batch.y, torch.ones_like(mine))
            is_new = batch.y >= old
            top += scores[is_new].max(dim=1).values.sum()
            new_samples += int(is_new.sum())
        self.network.train(was)
        means = sums / counts.clamp_min(1)
        self.init_mean = torch.cat([self.init_mean[:old], means[old:]])
        self.current_mean = means[:old]
        self.confidence = torch.cat([self.confidence, (top / max(new_samples, 1)).reshape(1)])

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = super().predict(x)
        scores = F.softmax(out["cnn"].float(), dim=1)
        old = self.num_old_classes
        if old and len(self.current_mean) == old and len(self.init_mean) >= old:
            task_of = torch.cat(
                [
                    torch.full((s.stop - s.start,), i, device=scores.device)
                    for i, s in enumerate(self.network.head.chunk_slices())
                ]
            )[:old]
            factor = self.init_mean[:old] / self.current_mean.clamp_min(1e-12)
            factor = factor * self.confidence[-1] / self.confidence[task_of]
            rectify = scores.argmax(dim=1) >= old
            scores[rectify, :old] *= factor
        out["il2m"] = scores
        return out
