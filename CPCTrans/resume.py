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

from CPCTrans.checkpoint import CheckpointError, load, save_atomic


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of everything random in one epoch of a run seeded with `seed`."""
    return seed * 100_003 + epoch


RANK_OFFSET = 1_000_003  # between the seeds of two processes' epochs: no two (epoch, rank) share one


def seed_epoch(seed: int, epoch: int, rank: int = 0) -> int:
    """Seeds Python, NumPy and torch for `epoch` in process `rank`; returns the seed used."""
    value = epoch_seed(seed, epoch) + rank * RANK_OFFSET
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


def resumable_checkpoints(model_dir: Path) -> list[Path]:
    """The complete checkpoints of a run folder a run can continue from (temporary files are hidden and never
    match; model_best copies are not the run's latest state)."""
    return [path for path in model_dir.glob("*.pth.tar") if not path.name.startswith("model_best")]


def latest_checkpoint(model_dir: Path) -> Path:
    """The newest resumable checkpoint of a run folder."""
    candidates = resumable_checkpoints(model_dir)
    if not candidates:
        raise CheckpointError(f"{model_dir}: no checkpoint to resume from; start without --resume")
    return max(candidates, key=lambda path: path.stat().st_mtime_ns)


def resume_path(resume: str, model_dir: Path) -> Path:
    return latest_checkpoint(model_dir) if resume == "latest" else Path(resume)


def begin_epoch(loader, augmenter, seed: int, epoch: int, skip_steps: int, saved_rng: dict | None,
                device: torch.device, rank: int = 0) -> None:
    """Seeds `epoch` for training in process `rank`; when continuing `skip_steps` into it, restores the RNG states
    saved at the stop (this process's)."""
    augmenter.reseed(seed_epoch(seed, epoch, rank))
    if skip_steps and saved_rng:
        torch.set_rng_state(saved_rng["torch"])
        augmenter.generator.set_state(saved_rng["augment"])
        if saved_rng["cuda"] and device.type == "cuda":
            torch.cuda.set_rng_state_all(saved_rng["cuda"])
    loader.sampler.set_epoch(epoch, skip_steps * loader.batch_size * loader.sampler.world_size)


def begin_validation(loader, augmenter, seed: int, epoch: int, rank: int = 0) -> None:
    """Validation of `epoch` sees the same clips and augmentation whenever it runs."""
    loader.sampler.set_epoch(epoch)
    augmenter.reseed(epoch_seed(seed, epoch) + rank * RANK_OFFSET)


def rng_snapshot(augmenter, device: torch.device) -> dict:
    """This process's random states; a checkpoint written inside an epoch keeps every process's, in rank order."""
    return {"torch": torch.get_rng_state(), "augment": augmenter.generator.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else []}


def save_interrupted(state: dict, model_dir: Path, reason: str) -> Path:
    """Writes the checkpoint of a stop inside an epoch (state['epoch'] complete, state['step'] steps into the next)."""
    path = model_dir / f"interrupted_epoch{state['epoch'] + 1}_step{state['step']}.pth.tar"
    model_dir.mkdir(parents=True, exist_ok=True)
    save_atomic(state, path)
    print(f"stopped by {reason} at epoch {state['epoch'] + 1}, step {state['step']}; continue with --resume {path}")
    return path


def resume_training(args, model, config: dict, optimizer, scheduler, model_dir: Path,
                    world_size: int = 1) -> tuple[float, int, list | None]:
    """Loads `--resume` into the model, optimiser (unless --reset_lr) and scheduler and sets args.start_epoch.

    Returns (best accuracy so far, steps already done in the next epoch, each process's RNG states to replay them).
    An epoch's checkpoint continues with any number of processes; one written inside an epoch, with as many as
    wrote it.
    """
    if not args.resume:
        # Saving rotates out older checkpoints of the folder: a fresh run must not start in an occupied one.
        if any(model_dir.glob("*.pth.tar")):
            raise CheckpointError(f"{model_dir}: already holds the checkpoints of a run with these flags; continue "
                                  f"it with --resume latest, or give another --prefix (nothing was changed)")
        return 0.0, 0, None
    path = resume_path(args.resume, model_dir)
    state = load(path, model.kind)
    if state["model_config"] != config:
        raise CheckpointError(f"{path}: was trained with {state['model_config']}, these flags give {config}; "
                              f"resume with the same flags")
    model.load_state_dict(state["state_dict"])
    if not args.reset_lr:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    args.start_epoch, step = state["epoch"], state["step"]
    if step and len(state["rng"]) != world_size:
        raise CheckpointError(f"{path}: was stopped inside an epoch by {len(state['rng'])} processes; resume it with "
                              f"as many, or from the last epoch checkpoint")
    print(f"resumed from {path} at epoch {args.start_epoch}" + (f", step {step}" if step else ""))
    return state["best_acc"], step, state["rng"]
