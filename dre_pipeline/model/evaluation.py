"""Accuracy, macro-F1 and the confusion matrix, from predicted and true class ids."""

import numpy as np
import torch

from ..data import SPLIT_NAMES


def split_accuracy(pred: torch.Tensor, y: torch.Tensor, split: torch.Tensor) -> dict:
    """Accuracy of ``pred`` against ``y`` on each part of the split, by name."""
    return {name: float((pred[split == i] == y[split == i]).float().mean()) for i, name in enumerate(SPLIT_NAMES)}


def classification_report(pred: np.ndarray, true: np.ndarray, num_classes: int) -> dict:
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)  # rows: true class, columns: predicted
    np.add.at(confusion, (true, pred), 1)
    tp = np.diag(confusion).astype(float)
    precision = np.divide(tp, confusion.sum(0), out=np.zeros_like(tp), where=confusion.sum(0) > 0)
    recall = np.divide(tp, confusion.sum(1), out=np.zeros_like(tp), where=confusion.sum(1) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=precision + recall > 0)
    return {
        "accuracy": float(tp.sum() / max(len(true), 1)),
        "macro_f1": float(f1.mean()),
        "confusion": confusion.tolist(),
    }
