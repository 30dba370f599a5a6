"""Experience replay with an exemplar memory."""

from __future__ import annotations

from cilkit.learners.base import Learner, register_learner


@register_learner("replay")
class Replay(Learner):
    """Replay (Rolnick et al., NeurIPS 2019): the new data plus an exemplar memory, CE only.

    Rolnick et al., "Experience Replay for Continual Learning", NeurIPS 2019; with PyCIL's
    fixed-budget herding memory it is PyCIL's ``replay`` baseline.
    """

    needs_memory = True
