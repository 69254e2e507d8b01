"""Training: token sources, the activation store, the trainer, its config, checkpoints, data parallel.

``from tc_circuits.training import TrainConfig, train_transcoders`` keeps working.
"""

from tc_circuits.training.config import TrainConfig
from tc_circuits.training.trainer import Trainer, train_transcoders

__all__ = ["TrainConfig", "Trainer", "train_transcoders"]
