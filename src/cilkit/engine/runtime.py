"""Device, precision and seeding."""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch

from cilkit.config.schema import EngineConfig
from cilkit.errors import ConfigError


def resolve_device(cfg: EngineConfig, local_rank: int | None = None) -> torch.device:
    """The training device: CUDA when asked or available (``auto``), else the CPU."""
    if cfg.device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank or 0)
        return torch.device("cpu")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"engine.device: '{cfg.device}' asked for but CUDA is not available")
    if cfg.device == "cuda" and local_rank is not None:
        return torch.device("cuda", local_rank)
    return torch.device(cfg.device)


def autocast_dtype(cfg: EngineConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for full precision."""
    if cfg.amp == "off" or (cfg.amp == "auto" and device.type != "cuda"):
        return None
    if cfg.amp == "fp16":
        return torch.float16
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """An autocast context for ``dtype`` (a no-op context when None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and torch; ask for deterministic algorithms when ``deterministic``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True
