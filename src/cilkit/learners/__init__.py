"""Learners: the Learner contract and one small file per method, registered by import."""

from cilkit.contract import Batch, StepOutput, TaskContext, TrainingStage
from cilkit.learners import (  # noqa: F401  (registration)
    acil,
    aper,
    bic,
    coda_prompt,
    der,
    derpp,
    dsal,
    dualprompt,
    ease,
    eeil,
    ewc,
    fecam,
    finetune,
    foster,
    gdumb,
    icarl,
    il2m,
    joint,
    l2p,
    lucir,
    lwf,
    memo,
    mislas,
    paco,
    podnet,
    proto_ltcil,
    ranpac,
    replay,
    ride,
    simplecil,
    slca,
    wa,
)
from cilkit.learners.base import LEARNERS, Learner, create_learner, register_learner

__all__ = [
    "Batch",
    "LEARNERS",
    "TrainingStage",
    "Learner",
    "StepOutput",
    "TaskContext",
    "create_learner",
    "register_learner",
]
