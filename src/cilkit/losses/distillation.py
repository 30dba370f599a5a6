"""Knowledge distillation: the one home of ``kd_loss``."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """Cross-entropy between temperature-softened teacher and student distributions.

    ``-sum_c softmax(teacher / T)_c * log_softmax(student / T)_c`` averaged over the batch, as in
    Hinton et al. (2015) and the iCaRL / WA implementations of PyCIL (no T^2 factor).

    Args:
        student: logits of the model being trained, restricted to the teacher's classes.
        teacher: logits of the frozen old model.
        temperature: softening temperature T.
    """
    log_p = F.log_softmax(student.float() / temperature, dim=1)
    q = F.softmax(teacher.float() / temperature, dim=1)
    return -(q * log_p).sum(dim=1).mean()
