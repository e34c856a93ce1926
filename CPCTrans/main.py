"""Self-supervised pretraining: CPC-style dense future prediction with a ResNet18 + Transformer encoder.

    python CPCTrans/main.py --net resnet18 --dataset ucf101 --batch_size 16 --img_dim 224 \
        --epochs 300 --num_seq 5 --pred_step 3
"""
import argparse
from pathlib import Path

import torch

from CPCTrans.augment import COLOR_AUG_KINDS, GRAY_KINDS, ClipAugment, pretraining_recipe
from CPCTrans.checkpoint import load_pretrained
from CPCTrans.convgru import GRU_DROPOUT
from CPCTrans.cpc import FuturePredictor, PretextMetrics, contrastive_loss, dense_scores, plateau_warning, reverse_future
from CPCTrans.data import SHORT_SIDE, make_loader, read_class_names, split_dataset
from CPCTrans.device import autocast
from CPCTrans.distributed import Processes, gather_with_grad
from CPCTrans.encoder import ATTENTION_KINDS, POSITION_KINDS
from CPCTrans.runtime import (REPO_ROOT, adam, add_distributed_flags, add_gru_dropout_flag, add_resize_flag,
                              add_run_flags, add_schedule_flags, add_source_flags, add_speed_flags, check_img_dim,
                              csv_root, fraction, prepare_model, run_folder, speed_summary, split_csv,
                              start_processes)
from CPCTrans.training import Run, fit, optimize, run_command

NEGATIVE_KINDS = ("global", "local")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="CPCTrans self-supervised pretraining")
    parser.add_argument("--model", default="cpc-trans", choices=["cpc-trans"],
                        help="unused; accepted so that the reference's commands run")
    parser.add_argument("--dataset", default="ucf101", help="name of the folder of CSVs under ProcessData/data/")
    parser.add_argument("--split", default=1, type=int, choices=[1, 2, 3],
                        help="the split whose training list is pretrained on (the published weights used 3)")
    parser.add_argument("--num_seq", default=5, type=int, help="frames per clip")
    parser.add_argument("--pred_step", default=3, type=int, help="frames to predict")
    parser.add_argument("--ds", default=3, type=int, help="frame stride")
    parser.add_argument("--pretrain", default="", help="checkpoint to initialise the weights from")
    add_schedule_flags(parser, weight_decay=1e-5)
    parser.add_argument("--train_what", default="all", choices=["all", "last"],
                        help="last: freeze the ResNet trunk (its BatchNorm statistics too)")
    parser.add_argument("--img_dim", default=128, type=int)
    add_source_flags(parser, "frames", SHORT_SIDE)
    add_run_flags(parser, REPO_ROOT / "CPCTrans")
    add_speed_flags(parser)
    parser.add_argument("--attn", default="full", choices=ATTENTION_KINDS,
                        help="full: the reference; causal: a frame attends to its own and earlier frames; split: "
                             "causal over the context, each predicted frame attends to itself only")
    parser.add_argument("--pos_enc", default="none", choices=POSITION_KINDS,
                        help="none: the reference; learned or sincos: spatio-temporal position of each token")
    parser.add_argument("--color_aug", default="frame", choices=COLOR_AUG_KINDS,
                        help="frame: grayscale and color jitter drawn per frame (the reference); clip: once per clip, "
                             "which left the pretext's 1/3 plateau on the demo videos where frame did not "
                             "(docs/results.md)")
    parser.add_argument("--gray", default="channel", choices=GRAY_KINDS,
                        help="channel: the reference's grayscale, one random RGB channel copied to all three; "
                             "luminance: a true grayscale")
    add_resize_flag(parser, "nearest")
    add_gru_dropout_flag(parser)
    parser.add_argument("--val_fraction", default=0.3, type=fraction,
                        help="validate on this fixed random share of the test split's videos (the reference's 0.3)")
    parser.add_argument("--diagnose_future", action="store_true",
                        help="validation also scores each clip with its predicted frames reversed (one more forward "
                             "pass per batch) and reports that top-1")
    parser.add_argument("--negatives", default="global", choices=NEGATIVE_KINDS,
                        help="under torchrun, score each prediction against the targets of every process's clips "
                             "(global, one process's loss on the global batch) or of its own only (local, as the "
                             "reference's DataParallel does)")
    add_distributed_flags(parser)
    args = parser.parse_args(argv)
    check_img_dim(parser, args.img_dim)
    return args


def run_name(args: argparse.Namespace) -> str:
    name = (f"{args.dataset}-{args.img_dim}_{args.net}_{args.model}_bs{args.batch_size}_lr{args.lr}"
            f"_seq{args.num_seq}_pred{args.pred_step}_ds{args.ds}_attn-{args.attn}_train-{args.train_what}")
    # Each choice that departs from the reference's is named; the reference's settings give the plain name.
    if args.pos_enc != "none":
        name += f"_pos-{args.pos_enc}"
    if args.color_aug != "frame":
        name += f"_color-{args.color_aug}"
    if args.gray != "channel":
        name += f"_gray-{args.gray}"
    if args.resize != "nearest":
        name += f"_resize-{args.resize}"
    if args.gru_dropout != GRU_DROPOUT:
        name += f"_grudp{args.gru_dropout}"
    if args.source != "frames":
        name += f"_src-{args.source}{args.short_side}"
    if args.pretrain:
        name += "_pt=" + Path(args.pretrain).name
    return name


def build_loaders(args, device, processes: Processes):
    num_classes = len(read_class_names(csv_root(args) / "classInd.txt"))
    loaders = {}
    for stage, csv_name in (("train", "train"), ("val", "test")):
        training = stage == "train"
        dataset = split_dataset(split_csv(args, csv_name), num_classes, args.num_seq, args.ds,
                                encoded=args.decode == "gpu", replace_bad=True,
                                fraction=1.0 if training else args.val_fraction, source=args.source,
                                short_side=args.short_side)
        # Validation drops its last smaller batch too: fewer videos give fewer negatives, and a higher top-1.
        loaders[stage] = make_loader(dataset, args.batch_size, args.workers, training, device, args.seed,
                                     drop_last=True, rank=processes.rank, world_size=processes.world_size)
    return loaders


def scores_against(predictions: torch.Tensor, targets: torch.Tensor, processes: Processes | None = None):
    """-> (scores, first_column): against this process's targets, or, given `processes`, against every process's
    (the positive of row i is then column first_column + i)."""
    if processes is None:
        return dense_scores(predictions, targets), 0
    rows = predictions.shape[0] * predictions.shape[1] * predictions.shape[3] * predictions.shape[4]
    return dense_scores(predictions, gather_with_grad(targets)), processes.rank * rows


def pretext_loss(model, inputs: torch.Tensor, device: torch.device, amp: bool, every_process: Processes | None = None):
    """Forward pass and loss on augmented clips -> (loss, scores, targets, first_column); `every_process` as
    scores_against's `processes`."""
    with autocast(device, amp):
        predictions, targets = model(inputs)
        scores, first_column = scores_against(predictions, targets, every_process)
        loss = contrastive_loss(scores, first_column)
    return loss, scores, targets, first_column


def train_step(model, optimizer, inputs: torch.Tensor, device: torch.device, amp: bool,
               every_process: Processes | None = None):
    result = pretext_loss(model, inputs, device, amp, every_process)
    optimize(optimizer, result[0])
    return result


def reversed_future_scores(model, inputs: torch.Tensor, pred_step: int, device: torch.device, amp: bool,
                           every_process: Processes | None = None):
    """The score matrix of the same clips with their predicted frames reversed (PretextMetrics.update_reversed)."""
    with torch.no_grad(), autocast(device, amp):
        return scores_against(*model(reverse_future(inputs, pred_step)), every_process)[0]


class PretextTask:
    """Pretraining's step and metrics for training.fit."""

    def __init__(self, args: argparse.Namespace):
        self.args = args

    def new_metrics(self, training: bool) -> PretextMetrics:
        return PretextMetrics(step_similarity=not training)

    def step(self, run: Run, batch, training: bool, metrics: PretextMetrics) -> None:
        global_negatives = run.processes.distributed and self.args.negatives == "global"
        every_process = run.processes if global_negatives else None
        if training:
            result = train_step(run.step_model, run.optimizer, batch.inputs, run.device, run.args.amp, every_process)
        else:
            result = pretext_loss(run.step_model, batch.inputs, run.device, run.args.amp, every_process)
        metrics.update(*result)
        if not training and self.args.diagnose_future and self.args.pred_step > 1:
            # After update(): a CUDA-graph replay (--compile reduce-overhead) reuses the first pass's outputs.
            metrics.update_reversed(reversed_future_scores(run.step_model, batch.inputs, self.args.pred_step,
                                                           run.device, run.args.amp, every_process), result[3])

    def describe(self, train: dict, val: dict) -> str:
        """The shares of wrong validation picks say why a pretext is stuck: mostly temporal at the 1/3 plateau
        (right video and position, wrong step), mostly other-video when only positions are told apart. The targets'
        similarity across steps says whether the temporal picks are the prediction's fault or the encoder's: near 1,
        the encoder gives every frame of a video the same output, and no predictor can tell the steps apart. The
        top-1 with the predicted frames reversed says whether the top-1 comes from what those frames show
        (PretextMetrics.update_reversed)."""
        line = f"train loss {train['loss']:.4f} top1 {train['top1']:.4f}  "
        if val:
            line += (f"val loss {val['loss']:.4f} top1 {val['top1']:.4f} top3 {val['top3']:.4f} "
                     f"top5 {val['top5']:.4f}  wrong picks: spatial {val['wrong_spatial']:.2f} "
                     f"temporal {val['wrong_temporal']:.2f} other video {val['wrong_easy']:.2f}  ")
            if "step_similarity" in val:
                line += f"targets across steps: cos {val['step_similarity']:.2f}  "
            if "top1_reversed" in val:
                line += f"future reversed: top1 {val['top1_reversed']:.4f}  "
        return line


def train(args: argparse.Namespace) -> Path:
    device, processes = start_processes(args)
    loaders = build_loaders(args, device, processes)
    torch.manual_seed(args.seed)
    model = FuturePredictor(args.net, args.num_seq, args.pred_step, args.attn, args.pos_enc, args.gru_dropout)
    if args.pretrain:
        print(load_pretrained(model, args.pretrain))
    if args.train_what == "last":
        model.encoder.backbone.requires_grad_(False)
    step_model = prepare_model(model, device, args.compile, processes, args.sync_bn)
    optimizer = adam([p for p in model.parameters() if p.requires_grad], device, args.lr, args.wd)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=100, gamma=0.5)
    recipe = pretraining_recipe(args.color_aug, args.gray, args.resize)
    augmenters = {stage: ClipAugment(recipe, args.img_dim, compiled=args.compile is not None)
                  for stage in ("train", "val")}
    run = Run(args, model, step_model, model.config, optimizer, scheduler, loaders, augmenters, device,
              run_folder(args, run_name(args)), processes)
    print(f"pretraining on {device} ({speed_summary(args)}; {processes.world_size} process(es) x batch "
          f"{args.batch_size} = global batch {processes.world_size * args.batch_size}, {args.negatives} negatives); "
          f"logs and checkpoints in {run.run_dir}")
    model_dir, last_val = fit(run, PretextTask(args))
    warning = plateau_warning(last_val, args.pred_step, model_dir, args.color_aug)
    if warning:
        print(warning)
    return model_dir


def main(argv=None) -> None:
    run_command(train, parse_args(argv))


if __name__ == "__main__":
    main()
