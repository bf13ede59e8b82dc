"""Evaluation: metrics, protocols (own split, pair lists, 1:N searches, HW2P2), calibration, reports and plots."""

from facelab.evaluation import deepface  # noqa: F401  (registers the learned DeepFace scorer in SCORERS)
from facelab.evaluation.metrics import (
    all_pairs,
    auc,
    best_accuracy,
    eer,
    roc_curve,
    tar_at_far,
    topk_accuracy,
    verification_report,
)

__all__ = ["all_pairs", "auc", "best_accuracy", "eer", "roc_curve", "tar_at_far", "topk_accuracy",
           "verification_report"]
