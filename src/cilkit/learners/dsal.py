"""DS-AL: dual-stream analytic learning, ACIL's classifier plus a compensation stream fitted to
its residuals."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from cilkit.components.analytic import ACTIVATIONS, RecursiveRidge
from cilkit.config.schema import FieldError
from cilkit.contract import TaskContext
from cilkit.learners.acil import ACIL, ACILConfig
from cilkit.learners.base import register_learner

Activation = Literal["relu", "tanh", "identity"]


@dataclass(frozen=True)
class DSALConfig(ACILConfig):
    name: str = "dsal"
    gamma_comp: float = 0.1
    """Ridge of the compensation stream (the authors' ``--gamma-comp``: 0.1)."""
    compensation_ratio: float = 1.0
    """C, the compensation stream's weight in the scores (the code's default 1; the README
    recommends 0.6 on CIFAR-100 and 1.5 on ImageNet)."""
    activation_main: Activation = "relu"
    """Activation of the main stream's input (the code: ReLU)."""
    activation_comp: Activation = "tanh"
    """Activation of the compensation stream's input (the code: tanh)."""
    fit_batch_size: int = 4096
    """Rows per update, in a random order (the README's ``--IL-batch-size 4096``, a shuffled
    loader): the compensation stream's targets are the residuals of the main stream updated
    with each batch, so, unlike ACIL's, its solution depends on the batches."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.gamma_comp <= 0:
            raise FieldError("gamma_comp", "must be > 0")


@register_learner("dsal")
class DSAL(ACIL):
    """DS-AL (Zhuang et al., AAAI 2024): ACIL's main stream plus a compensation stream.

    Zhuang, He, Fang, Chen, Lin, Tan, "DS-AL: A Dual-Stream Analytic Learning for Exemplar-Free
    Class-Incremental Learning", AAAI 2024; as in the authors' code (ZHUANGHP/
    Analytic-continual-learning, ``analytic/DSAL.py``), on ACIL's base training and freezing:

    - one random buffer without activation, ``X = f W`` (``U(+-1/sqrt(d))``, float64);
    - main stream: a recursive ridge classifier (``gamma``) on ``relu(X)`` with one-hot targets,
      equal to the joint ridge solution on every sample seen;
    - compensation stream: a second recursive ridge classifier (``gamma_comp``) on ``tanh(X)``
      fitted to the main stream's residuals ``Y - relu(X) W_main`` with previous label
      cleansing: the old classes' columns of the residuals are zeroed;
    - scores ``relu(X) W_main + C tanh(X) W_comp``, ``C = compensation_ratio``.

    The code works batch by batch (``DSAL.fit``): the main stream is updated with the batch,
    then the batch's residuals under the updated main stream train the compensation stream; the
    batches are ``fit_batch_size`` rows in a random order from the task's generator (the code's
    shuffled loader). The paper's compensation stream is fitted to the residuals of the main
    stream after the whole task (one batch per task: ``fit_batch_size`` at least the task's
    size). The first task is fitted after the base training (the code's "Re-align"). PyCIL and
    LAMDA-PILOT have no DS-AL. Two ``buffer_size^2`` float64 matrices are kept and saved.
    """

    config_cls = DSALConfig
    cfg: DSALConfig
    buffer_activation = "identity"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.compensation = RecursiveRidge(self.cfg.gamma_comp)

    def fit(self, X: torch.Tensor, Y: torch.Tensor, ctx: TaskContext) -> None:
        main_act = ACTIVATIONS[self.cfg.activation_main]
        comp_act = ACTIVATIONS[self.cfg.activation_comp]
        order = torch.randperm(len(X), generator=ctx.generator).to(X.device)
        for rows in torch.split(order, self.cfg.fit_batch_size):
            x, y = X[rows], Y[rows]
            self.classifier.fit(main_act(x), y)
            residual = y - self.classifier(main_act(x))
            residual[:, : self.num_old_classes] = 0  # previous label cleansing
            self.compensation.fit(comp_act(x), residual)

    def scores(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        X = self.buffer(features)
        main = self.classifier(ACTIVATIONS[self.cfg.activation_main](X))
        comp = self.compensation(ACTIVATIONS[self.cfg.activation_comp](X))
        return {"cnn": main + self.cfg.compensation_ratio * comp}
