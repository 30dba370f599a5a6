"""cilkit: class-incremental learning (and long-tailed CIL) on one fast PyTorch engine."""

__version__ = "0.2.0.dev0"
