"""Runs that can stop and continue exactly: per-epoch seeding, graceful stops, finding the newest checkpoint.

Every epoch draws its randomness from (seed, epoch) alone: the data order and clip starts
(data.EpochSampler), the augmentation and dropout. A run continued from the end of epoch N, or
from step K inside it with the RNG states saved there, therefore repeats exactly what the
uninterrupted run would have done.
"""
import random
import signal
from pathlib import Path

import numpy as np
import torch

from CPCTrans.checkpoint import CheckpointError


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch


def seed_epoch(seed: int, epoch: int) -> int:
    """Seeds Python, NumPy and torch for `epoch`; returns the seed used."""
    value = epoch_seed(seed, epoch)
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)
    return value


class GracefulStop:
    """While active, SIGINT and SIGTERM only raise a flag; the training loop stops at the next safe point."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested: str | None = None
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> "GracefulStop":
        self._previous = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def latest_checkpoint(model_dir: Path) -> Path:
    """The newest complete checkpoint of a run folder (temporary files are hidden and never match)."""
    candidates = [path for path in model_dir.glob("*.pth.tar") if not path.name.startswith("model_best")]
    if not candidates:
        raise CheckpointError(f"{model_dir}: no checkpoint to resume from; start without --resume")
    return max(candidates, key=lambda path: path.stat().st_mtime_ns)


def resume_path(resume: str, model_dir: Path) -> Path:
    return latest_checkpoint(model_dir) if resume == "latest" else Path(resume)
