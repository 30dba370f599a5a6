"""Exemplar memory and its selection strategies (herding, random, class_balanced, reservoir)."""

from cilkit.buffers.memory import ExemplarMemory
from cilkit.buffers.selection import SELECTORS, class_means, herding, nme_logits, register_selector

__all__ = [
    "SELECTORS",
    "ExemplarMemory",
    "class_means",
    "herding",
    "nme_logits",
    "register_selector",
]
