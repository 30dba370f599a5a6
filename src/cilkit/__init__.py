"""cilkit: class-incremental learning (and long-tailed CIL) on one fast PyTorch engine."""

__version__ = "0.1.0"
