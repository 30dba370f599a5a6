"""A trainer that counts the images going through the learner's backbone (training and
evaluation passes alike), for the tests of the feature caches."""

from __future__ import annotations

from cilkit.backbones import unfrozen
from cilkit.engine.trainer import Trainer


class CountingTrainer(Trainer):
    """:class:`Trainer` with ``images``: the backbone's forward passes, counted per image (per
    pass of the ViT under a PEFT ensemble, whose branches run it once each); ``parts``: the
    run's parts once set up."""

    def setup(self, dist=None):
        parts = super().setup(dist)
        self.parts, self.images = parts, 0

        def count(module, inputs, output):
            self.images += int(inputs[0].shape[0])

        target = unfrozen(parts.learner.network.backbone)
        getattr(target, "vit", target).register_forward_hook(count)
        return parts
