"""Weight aligning (Zhao et al., CVPR 2020): the one home of the step WA and DER share."""

from __future__ import annotations

import torch

from cilkit.backbones.heads import Head


@torch.no_grad()
def align_weights(head: Head, num_old: int) -> float:
    """Rescale the new classes' weight vectors so their mean norm equals the old classes'.

    Classes ``num_old`` and after are the new ones; the biases are left as they are (as in WA's
    and PyCIL's code).

    Returns:
        The factor gamma = mean ||w_old|| / mean ||w_new|| that was applied in place.
    """
    norms = head.weight.detach().norm(dim=1)
    gamma = norms[:num_old].mean() / norms[num_old:].mean()
    scale = torch.ones_like(norms)
    scale[num_old:] = gamma
    head.scale_weights_(scale, bias=False)
    return float(gamma)
