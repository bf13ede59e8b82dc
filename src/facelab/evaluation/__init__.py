"""Evaluation: metrics, embedding extraction, protocols and plots."""

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
