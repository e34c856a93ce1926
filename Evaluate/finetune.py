"""Finetuning and linear probing (Evaluate/test.py without --test or --retrieval): the classifier on a pretrained
or random encoder, trained by the epoch loop pretraining uses."""
import argparse
from pathlib import Path

import torch
from torch.nn import functional as F

from CPCTrans.augment import ClipAugment, finetuning_recipes
from CPCTrans.checkpoint import load, load_pretrained
from CPCTrans.convgru import GRU_DROPOUT
from CPCTrans.data import make_loader
from CPCTrans.device import autocast
from CPCTrans.distributed import Processes
from CPCTrans.runtime import adam, prepare_model, run_folder, speed_summary, start_processes
from CPCTrans.training import Run, fit, optimize
from Evaluate.classifier import VideoClassifier
from Evaluate.inputs import (ARCHITECTURE_DEFAULTS, architecture, class_names, clip_dataset, fill_data_flags,
                             report_plateau)


class ClassificationMetrics:
    """Loss, top-1 and top-5 over the clips seen, counted on the device; summary() reads them back."""

    def __init__(self):
        self.totals = None
        self.seen = 0

    def update(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices == labels[:, None]
        counts = torch.stack([loss.detach() * len(labels), top5[:, 0].sum(), top5.any(dim=1).sum()])
        self.totals = counts if self.totals is None else self.totals + counts
        self.seen += len(labels)

    def summary(self) -> dict:
        if not self.seen:
            return {}
        loss, top1, top5 = (self.totals / self.seen).tolist()
        return {"loss": loss, "top1": top1, "top5": top5}

    def reduce(self, processes: Processes) -> None:
        counts = torch.zeros(3) if self.totals is None else self.totals.cpu().double()
        total = processes.sum(torch.cat([counts, torch.tensor([float(self.seen)], dtype=torch.float64)]))
        self.totals, self.seen = total[:3], int(total[3])


class ClassificationTask:
    """Finetuning's step and metrics for training.fit."""

    def new_metrics(self, training: bool) -> ClassificationMetrics:
        return ClassificationMetrics()

    def step(self, run: Run, batch, training: bool, metrics: ClassificationMetrics) -> None:
        with autocast(run.device, run.args.amp):
            logits = run.step_model(batch.inputs).float()
            loss = F.cross_entropy(logits, batch.labels)
        if training:
            optimize(run.optimizer, loss)
        metrics.update(loss, logits, batch.labels)

    def describe(self, train: dict, val: dict) -> str:
        validation = f"val loss {val['loss']:.4f} top1 {val['top1']:.4f}  " if val else ""
        return f"train loss {train['loss']:.4f} top1 {train['top1']:.4f}  {validation}"


def run_name(args) -> str:
    pretrain = "random" if args.pretrain == "random" else Path(args.pretrain).name
    name = (f"{args.dataset}-{args.img_dim}-split{args.split}_{args.net}_{args.model}_bs{args.batch_size}"
            f"_lr{args.lr}_wd{args.wd}_dp{args.dropout}_seq{args.num_seq}_ds{args.ds}_train-{args.train_what}"
            f"_pt={pretrain}")
    # Each choice that departs from the reference's is named; the reference's settings give the plain name.
    if args.color_jitter == "off":
        name += "_jitter-off"
    if args.resize != "nearest":
        name += f"_resize-{args.resize}"
    if args.gru_dropout != GRU_DROPOUT:
        name += f"_grudp{args.gru_dropout}"
    if args.source != "frames":
        name += f"_src-{args.source}{args.short_side}"
    # A random init's architecture is its flags' (a checkpoint's is in its name); defaults keep the plain name.
    for key, default in ARCHITECTURE_DEFAULTS.items():
        if args.pretrain == "random" and getattr(args, key) not in (None, default):
            name += f"_{key}-{getattr(args, key)}"
    return name


def finetune(args: argparse.Namespace) -> Path:
    fill_data_flags(args)
    torch.manual_seed(args.seed)
    device, processes = start_processes(args)
    classes = class_names(args)
    pretrained = load(args.pretrain, "cpc") if args.pretrain != "random" else None
    loaders = {stage: make_loader(clip_dataset(csv_name, args, len(classes), windows=False,
                                               fraction=1.0 if stage == "train" else args.val_fraction),
                                  args.batch_size, args.workers, stage == "train", device, args.seed,
                                  rank=processes.rank, world_size=processes.world_size)
               for stage, csv_name in (("train", "train"), ("val", "test"))}
    model = VideoClassifier(len(classes), args.net, **architecture(args, pretrained and pretrained["model_config"],
                                                                   args.pretrain), dropout=args.dropout,
                            gru_dropout=args.gru_dropout)
    if pretrained is not None:
        print(load_pretrained(model, args.pretrain, pretrained))
        report_plateau(pretrained, args.pretrain)
    step_model = prepare_model(model, device, args.compile, processes, args.sync_bn)
    optimizer = adam(model.param_groups(args.train_what, args.lr), device, args.lr, args.wd)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=100, gamma=0.1)
    config = {**model.config, "num_seq": args.num_seq, "ds": args.ds, "img_dim": args.img_dim,
              "resize": args.resize, "dataset": args.dataset, "split": args.split, "source": args.source,
              "short_side": args.short_side}
    train_recipe, val_recipe = finetuning_recipes(args.color_jitter == "on", args.resize)
    compiled = args.compile is not None
    augmenters = {"train": ClipAugment(train_recipe, args.img_dim, compiled=compiled),
                  "val": ClipAugment(val_recipe, args.img_dim, compiled=compiled)}
    run = Run(args, model, step_model, config, optimizer, scheduler, loaders, augmenters, device,
              run_folder(args, run_name(args)), processes)
    print(f"finetuning ({args.train_what}) on {device} ({speed_summary(args)}); logs and checkpoints in "
          f"{run.run_dir}")
    model_dir, _ = fit(run, ClassificationTask())
    best = sorted(model_dir.glob("model_best_epoch*.pth.tar"))
    if best:
        print(f"best checkpoint: {best[-1]}")
    return model_dir
