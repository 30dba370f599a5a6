"""Losses: distillation now; long-tail losses and regularisers register here later."""

from cilkit.losses.distillation import kd_loss

__all__ = ["kd_loss"]
