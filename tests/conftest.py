"""Shared test set-up: the official-format fixture writers in tests/data are importable."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "data"))
sys.path.insert(0, str(Path(__file__).parent / "results"))
sys.path.insert(0, str(Path(__file__).parent / "learners"))
