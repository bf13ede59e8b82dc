"""Training engine: optimizers, schedules, EMA, AMP and the training loop (checkpoints: :mod:`facelab.runs`)."""

from facelab.engine.trainer import TrainResult, train

__all__ = ["TrainResult", "train"]
