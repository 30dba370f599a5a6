"""RIDE's diversity term on hand-made logits."""

from __future__ import annotations

import math

import pytest
import torch

from cilkit.losses import diversity_kl


def test_zero_when_every_expert_equals_the_mean():
    z = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
    for t in (1.0, 3.0, torch.tensor([0.5, 1.0, 2.0])):
        assert diversity_kl(z, z.clone(), t).abs().item() < 1e-6
    # a shift of every logit leaves the softmax, hence the distributions, equal: still zero
    assert diversity_kl(z + 5.0, z, 2.0).abs().item() < 1e-6


def test_two_experts_by_hand():
    a = math.log(3.0)
    z1, z2 = torch.tensor([[a, 0.0]]), torch.tensor([[-a, 0.0]])
    mean = (z1 + z2) / 2  # (0, 0): p = (1/2, 1/2); q1 = (3/4, 1/4), q2 = (1/4, 3/4)
    hand = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)  # = ln(4/3) / 2
    assert diversity_kl(z1, mean, 1.0).item() == pytest.approx(hand, rel=1e-6)
    assert diversity_kl(z2, mean, 1.0).item() == pytest.approx(hand, rel=1e-6)
    # T = 2: q1 = softmax((ln 3 / 2, 0)) = (r, 1 - r) with r = sqrt(3) / (sqrt(3) + 1), times T^2
    r = math.sqrt(3) / (math.sqrt(3) + 1)
    hand_t2 = 4 * (0.5 * math.log(0.5 / r) + 0.5 * math.log(0.5 / (1 - r)))
    assert diversity_kl(z1, mean, 2.0).item() == pytest.approx(hand_t2, rel=1e-6)
    per_class = diversity_kl(z1, mean, torch.tensor([2.0, 2.0]))  # one T per class
    assert per_class.item() == pytest.approx(hand_t2, rel=1e-6)


def test_the_mean_is_a_fixed_target():
    z = torch.tensor([[1.0, 0.0, -1.0]], requires_grad=True)
    mean = torch.tensor([[0.0, 1.0, 0.0]], requires_grad=True)
    diversity_kl(z, mean, 1.0).backward()
    assert mean.grad is None and z.grad.abs().sum() > 0
