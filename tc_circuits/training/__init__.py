"""Training: token sources, the activation store, the trainer, its config, checkpoints, data parallel.

``from tc_circuits.training import TrainConfig, train_transcoders`` keeps working; the trainer
is imported on first use (PEP 562), so reading ``TrainConfig`` (e.g. for ``tc-circuits train
--help``) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tc_circuits.training.config import TrainConfig

if TYPE_CHECKING:  # pragma: no cover
    from tc_circuits.training.trainer import Trainer, train_transcoders

__all__ = ["TrainConfig", "Trainer", "train_transcoders"]


def __getattr__(name: str) -> Any:
    if name in ("Trainer", "train_transcoders"):
        value = getattr(importlib.import_module("tc_circuits.training.trainer"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tc_circuits.training' has no attribute {name!r}")
