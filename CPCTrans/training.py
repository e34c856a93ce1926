"""The epoch loop of every training command (pretraining, finetuning, linear probe): resume, train, save a stop
inside an epoch, validate, keep the best, save, stop. A task supplies what differs: its step and its metrics.

Under torchrun every process runs the same loop on its share of each batch; they agree on stopping after each
training step, sum their metrics at the end of each pass, and rank 0 alone writes."""
import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn
from torchvision.utils import make_grid
from tqdm import tqdm

from CPCTrans.augment import ClipAugment, denormalize
from CPCTrans.checkpoint import CheckpointError, training_state
from CPCTrans.data import BadSamples, DataError
from CPCTrans.distributed import Processes, lost_peer, shutdown, where
from CPCTrans.prefetch import DeviceBatch, DeviceBatches
from CPCTrans.resume import (GracefulStop, begin_epoch, begin_validation, resume_training, rng_snapshot,
                             save_interrupted)
from CPCTrans.runtime import (best_after, save_epoch, saved_as, should_save, should_validate, stage_writers,
                              user_error)


class TrainingDiverged(Exception):
    """The loss stopped being a finite number."""


@dataclass
class Run:
    """A training run's pieces, as its command builds them."""

    args: argparse.Namespace
    model: nn.Module  # uncompiled: its state_dict names and train_mode
    step_model: nn.Module  # `model`, or its compiled version, for the steps
    config: dict  # what a checkpoint records of the model and a resume must match
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loaders: dict  # "train" and "val" DataLoaders
    augmenters: dict[str, ClipAugment]  # "train" and "val"
    device: torch.device
    run_dir: Path  # logs in img/, checkpoints in model/
    processes: Processes = Processes()


class Metrics(Protocol):
    def summary(self) -> dict:
        """At least "loss" and "top1" once a step was counted; {} before."""

    def reduce(self, processes: Processes) -> None:
        """Sums the counts over the processes; each calls it once, after its last batch."""


class Task(Protocol):
    def new_metrics(self, training: bool) -> Metrics: ...

    def step(self, run: Run, batch: DeviceBatch, training: bool, metrics: Metrics) -> None:
        """Forward pass, loss and, when training, the optimiser's step; counts the batch in `metrics`."""

    def describe(self, train: dict, val: dict) -> str:
        """An epoch's results for its console line; `val` is empty when the epoch was not validated."""


def run_command(job, args: argparse.Namespace) -> None:
    """Runs a command's `job(args)`; an error a user can fix, or the loss of another process of the run, ends it
    with one line naming the rank (under torchrun) instead of a traceback."""
    try:
        job(args)
    except (DataError, CheckpointError, TrainingDiverged, ValueError) as error:
        sys.exit(f"error: {where()}{user_error(error)}")
    except RuntimeError as error:
        lost = lost_peer(error)
        if lost is None:
            raise
        sys.exit(f"error: {where()}{lost}")
    finally:
        shutdown()


def optimize(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def stop_reason(reasons: list) -> str:
    """The signal that stopped the run (of the first process that received one), and where it arrived."""
    rank, signal_name = next((rank, reason) for rank, reason in enumerate(reasons) if reason)
    return signal_name if len(reasons) == 1 else f"{signal_name} (to rank {rank})"


def check_finite(summary: dict, epoch: int, step: int) -> None:
    if not math.isfinite(summary["loss"]):
        raise TrainingDiverged(f"the loss is {summary['loss']} at epoch {epoch + 1}, step {step}; nothing of this "
                               f"epoch was saved, the last epoch checkpoint is intact; lower --lr and resume from it")


def run_epoch(run: Run, task: Task, stage: str, epoch: int, bad_samples: BadSamples, writer, first_step: int = 0,
              stop: GracefulStop | None = None) -> tuple[dict, int]:
    """One pass over the `stage` ("train" or "val") loader, whose first `first_step` steps were done before a
    resume. Stops early when `stop.requested`. Returns (metrics, steps done in the epoch)."""
    training = stage == "train"
    if training:
        run.model.train_mode(run.args.train_what)
    else:
        run.model.eval()
    metrics = task.new_metrics(training)
    loader, augmenter = run.loaders[stage], run.augmenters[stage]
    steps_per_epoch = first_step + len(loader)
    batches = DeviceBatches(loader, augmenter, run.device, run.args.prefetch, augmenter.generator)
    progress = tqdm(batches, desc=f"{stage} epoch {epoch + 1}", leave=False, dynamic_ncols=True,
                    initial=first_step, total=steps_per_epoch, disable=not run.processes.is_main)
    step = first_step
    with batches, torch.set_grad_enabled(training):
        for batch in progress:
            if batch.problems:
                bad_samples.add(batch.problems)
            task.step(run, batch, training, metrics)
            if training and epoch == 0 and step == 0:
                writer.add_image("input_clip", make_grid(denormalize(batch.inputs[0].float()),
                                                         nrow=batch.inputs.shape[1]), epoch)
            step += 1
            if step % run.args.print_freq == 0:
                summary = metrics.summary()
                check_finite(summary, epoch, step)
                progress.set_postfix(loss=f"{summary['loss']:.3f}", top1=f"{summary['top1']:.3f}")
                if training:
                    for key, value in summary.items():
                        writer.add_scalar(f"local/{key}", value, epoch * steps_per_epoch + step)
            # Every process stops after the same step: training steps exchange gradients.
            if stop is not None and run.processes.any(stop.requested is not None):
                break
    progress.close()
    if run.processes.distributed:
        metrics.reduce(run.processes)
    summary = metrics.summary()
    if summary:
        check_finite(summary, epoch, step)
    return summary, step


def fit(run: Run, task: Task) -> tuple[Path, dict]:
    """Trains from --start_epoch (or where --resume left off) to --epochs. Returns the checkpoint folder and the
    last epoch's validation ({} when the run was stopped first).

    Each epoch: train (a SIGINT or SIGTERM ends it at the next step, saved with every process's RNG states to
    continue exactly), validate every --val_freq epochs, step the scheduler, write the curves, keep model_best when
    the validation's top-1 is the best so far, write the epoch checkpoint every --save_freq epochs (and always when
    stopping).
    """
    args, processes = run.args, run.processes
    model_dir = run.run_dir / "model"
    best_acc, start_step, resume_rng = resume_training(args, run.model, run.config, run.optimizer, run.scheduler,
                                                       model_dir, processes.world_size)
    bad_samples = BadSamples(args.max_bad_samples)
    val = {}
    with stage_writers(run.run_dir, processes.is_main) as writers, GracefulStop() as stop:
        for epoch in range(args.start_epoch, args.epochs):
            skip = start_step if epoch == args.start_epoch else 0
            begin_epoch(run.loaders["train"], run.augmenters["train"], args.seed, epoch, skip,
                        resume_rng and resume_rng[processes.rank], run.device, processes.rank)
            train, steps = run_epoch(run, task, "train", epoch, bad_samples, writers["train"], skip, stop)
            if steps < skip + len(run.loaders["train"]):
                rngs, reasons = zip(*processes.gather((rng_snapshot(run.augmenters["train"], run.device),
                                                       stop.requested)))
                if processes.is_main:
                    save_interrupted(training_state(run.model, run.config, run.optimizer, run.scheduler, args,
                                                    epoch, steps, best_acc, list(rngs)), model_dir,
                                     stop_reason(reasons))
                return model_dir, {}
            val = {}
            if should_validate(args, epoch):
                begin_validation(run.loaders["val"], run.augmenters["val"], args.seed, epoch, processes.rank)
                val, _ = run_epoch(run, task, "val", epoch, bad_samples, writers["val"])
            run.scheduler.step()
            for stage, results in (("train", train), ("val", val)):
                for key, value in results.items():
                    writers[stage].add_scalar(f"global/{key}", value, epoch + 1)
            is_best, best_acc = best_after(val, best_acc)
            reasons = processes.gather(stop.requested)
            stopping = any(reasons)
            path = None
            if processes.is_main:
                state = training_state(run.model, run.config, run.optimizer, run.scheduler, args, epoch + 1, 0,
                                       best_acc, val_metrics=val)
                path = save_epoch(state, model_dir, epoch + 1, is_best, should_save(args, epoch, stopping))
                tqdm.write(f"epoch {epoch + 1}/{args.epochs}  {task.describe(train, val)}-> {saved_as(path)}")
            if stopping:
                if processes.is_main:
                    print(f"stopped by {stop_reason(reasons)} after epoch {epoch + 1}; continue with --resume {path}")
                return model_dir, {}
    return model_dir, val
