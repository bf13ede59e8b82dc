"""Training engine: optimizers, schedules, checkpoints and the training loop."""

from facelab.engine.checkpoint import load_checkpoint, save_checkpoint
from facelab.engine.trainer import TrainResult, build_model_and_loss, resolve_device, train

__all__ = ["TrainResult", "build_model_and_loss", "load_checkpoint", "resolve_device", "save_checkpoint", "train"]
