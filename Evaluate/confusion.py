"""Confusion matrix of a test run, drawn as a PNG with OpenCV."""
from pathlib import Path

import cv2
import numpy as np
import torch


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes, num_classes) counts: rows are true classes, columns predicted ones."""
    flat = labels.long() * num_classes + predictions.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def save_confusion_png(matrix: torch.Tensor, path: Path, title: str, size: int = 640) -> None:
    """Row-normalised matrix, one square per cell, with a title bar."""
    counts = matrix.double()
    rates = (counts / counts.sum(dim=1, keepdim=True).clamp(min=1)).numpy()
    cell = max(1, size // len(rates))
    image = cv2.applyColorMap((rates * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)
    image = cv2.resize(image, (cell * len(rates), cell * len(rates)), interpolation=cv2.INTER_NEAREST)
    banner = np.full((40, image.shape[1], 3), 255, np.uint8)
    cv2.putText(banner, title, (6, 26), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    if not cv2.imwrite(str(path), np.vstack([banner, image])):
        raise OSError(f"{path}: cannot write the confusion matrix image")
