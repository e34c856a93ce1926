"""Self-supervised pretraining: CPC-style dense future prediction with a ResNet18 + Transformer encoder.

    python CPCTrans/main.py --net resnet18 --dataset ucf101 --batch_size 16 --img_dim 224 \
        --epochs 300 --num_seq 5 --pred_step 3
"""
import argparse
import math
import sys
from pathlib import Path

import torch
from torchvision.utils import make_grid
from tqdm import tqdm

from CPCTrans.augment import COLOR_AUG_KINDS, GRAY_KINDS, ClipAugment, denormalize, pretraining_recipe
from CPCTrans.checkpoint import CheckpointError, load_pretrained, training_state
from CPCTrans.convgru import GRU_DROPOUT
from CPCTrans.cpc import (SCORE_PRODUCTS, CPCTrans, PretextMetrics, contrastive_loss, dense_scores, plateau_warning,
                         reverse_future)
from CPCTrans.data import BadSamples, DataError, make_loader, read_class_names, split_dataset
from CPCTrans.encoder import ATTENTION_KINDS, POSITION_KINDS
from CPCTrans.prefetch import DeviceBatches
from CPCTrans.resume import (GracefulStop, begin_epoch, begin_validation, resume_training, rng_snapshot,
                             save_interrupted)
from CPCTrans.runtime import (REPO_ROOT, adam, add_gru_dropout_flag, add_resize_flag, add_run_flags, add_speed_flags,
                              autocast, best_after, check_img_dim, csv_root, fraction, prepare_model,
                              resolve_speed_flags, run_folder, save_epoch, saved_as, saves, speed_summary, split_csv,
                              stage_writers, user_error, validates)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="CPCTrans self-supervised pretraining")
    parser.add_argument("--net", default="resnet18", choices=["resnet18"])
    parser.add_argument("--model", default="cpc-trans", choices=["cpc-trans"])
    parser.add_argument("--dataset", default="ucf101", help="name of the folder of CSVs under ProcessData/data/")
    parser.add_argument("--split", default=1, type=int, choices=[1, 2, 3],
                        help="the split whose training list is pretrained on (the published weights used 3)")
    parser.add_argument("--num_seq", default=5, type=int, help="frames per clip")
    parser.add_argument("--pred_step", default=3, type=int, help="frames to predict")
    parser.add_argument("--ds", default=3, type=int, help="frame stride")
    parser.add_argument("--batch_size", default=16, type=int)
    parser.add_argument("--lr", default=1e-3, type=float)
    parser.add_argument("--wd", default=1e-5, type=float, help="weight decay")
    parser.add_argument("--resume", default="", help="checkpoint to continue, or 'latest' (newest of this run)")
    parser.add_argument("--pretrain", default="", help="checkpoint to initialise the weights from")
    parser.add_argument("--epochs", default=300, type=int)
    parser.add_argument("--start_epoch", default=0, type=int)
    parser.add_argument("--print_freq", default=5, type=int, help="steps between progress updates")
    parser.add_argument("--reset_lr", action="store_true", help="on resume, start a fresh optimiser at --lr")
    parser.add_argument("--prefix", default="tmp", help="logs go to <log_root>/log_<prefix>/")
    parser.add_argument("--train_what", default="all", choices=["all", "last"],
                        help="last: freeze the ResNet trunk (its BatchNorm statistics too)")
    parser.add_argument("--img_dim", default=128, type=int)
    add_run_flags(parser, REPO_ROOT / "CPCTrans")
    add_speed_flags(parser)
    parser.add_argument("--attn", default="full", choices=ATTENTION_KINDS,
                        help="full: the reference; causal: a frame attends to its own and earlier frames; split: "
                             "causal over the context, each predicted frame attends to itself only")
    parser.add_argument("--pos_enc", default="none", choices=POSITION_KINDS,
                        help="none: the reference; learned or sincos: spatio-temporal position of each token")
    parser.add_argument("--color_aug", default="frame", choices=COLOR_AUG_KINDS,
                        help="frame: grayscale and colour jitter drawn per frame (the reference); clip: once per clip, "
                             "which left the pretext's 1/3 plateau on the demo videos where frame did not (README)")
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
    add_score_products_flag(parser)
    args = parser.parse_args(argv)
    check_img_dim(parser, args.img_dim)
    return args


def add_score_products_flag(parser) -> None:
    parser.add_argument("--score_products", default="fp32", choices=SCORE_PRODUCTS,
                        help="how the pretext's score matrix is multiplied: fp32 (the reference) or bf16-split, the "
                             "same scores and gradients from bf16 parts on the tensor cores (CUDA; emulated "
                             "elsewhere, slower there; off by default until measured, see README)")


def run_name(args: argparse.Namespace) -> str:
    name = (f"{args.dataset}-{args.img_dim}_{args.net}_{args.model}_bs{args.batch_size}_lr{args.lr}"
            f"_seq{args.num_seq}_pred{args.pred_step}_ds{args.ds}_attn-{args.attn}_train-{args.train_what}")
    if args.pos_enc != "none":  # runs with the reference's architecture keep the folder names they had
        name += f"_pos-{args.pos_enc}"
    if args.color_aug != "frame":
        name += f"_color-{args.color_aug}"
    if args.gray != "channel":
        name += f"_gray-{args.gray}"
    if args.resize != "nearest":
        name += f"_resize-{args.resize}"
    if args.gru_dropout != GRU_DROPOUT:
        name += f"_grudp{args.gru_dropout}"
    if args.pretrain:
        name += "_pt=" + Path(args.pretrain).name
    return name


def build_loaders(args, device):
    num_classes = len(read_class_names(csv_root(args) / "classInd.txt"))
    loaders = {}
    for stage, csv_name in (("train", "train"), ("val", "test")):
        training = stage == "train"
        dataset = split_dataset(split_csv(args, csv_name), num_classes, args.num_seq, args.ds,
                                encoded=args.decode == "gpu", replace_bad=True,
                                fraction=1.0 if training else args.val_fraction)
        # Validation drops its last smaller batch too: fewer videos give fewer negatives, and a higher top-1.
        loaders[stage] = make_loader(dataset, args.batch_size, args.workers, training, device, args.seed,
                                     drop_last=True)
    return loaders


def pretext_loss(model, inputs: torch.Tensor, device: torch.device, amp: bool, products: str = "fp32"):
    """Forward pass and loss on augmented clips -> (loss, scores, targets); `products` as in dense_scores."""
    with autocast(device, amp):
        predictions, targets = model(inputs)
        scores = dense_scores(predictions, targets, products)
        loss = contrastive_loss(scores)
    return loss, scores, targets


def reversed_future_scores(model, inputs: torch.Tensor, pred_step: int, device: torch.device, amp: bool,
                           products: str = "fp32"):
    """The score matrix of the same clips with their predicted frames reversed (PretextMetrics.update_reversed)."""
    with torch.no_grad(), autocast(device, amp):
        return dense_scores(*model(reverse_future(inputs, pred_step)), products)


def train_step(model, optimizer, inputs: torch.Tensor, device: torch.device, amp: bool, products: str = "fp32"):
    loss, scores, targets = pretext_loss(model, inputs, device, amp, products)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss, scores, targets


class TrainingDiverged(Exception):
    """The loss stopped being a finite number."""


def check_finite(summary: dict, epoch: int, step: int) -> None:
    if not math.isfinite(summary["loss"]):
        raise TrainingDiverged(f"the loss is {summary['loss']} at epoch {epoch + 1}, step {step}; nothing of this "
                               f"epoch was saved, the last epoch checkpoint is intact; lower --lr and resume from it")


def run_epoch(model, step_model, loader, augmenter, optimizer, device, epoch, args, bad_samples, writer=None,
              first_step=0, stop=None):
    """One pass over `loader`, whose first `first_step` steps were done before a resume; trains when an
    optimizer is given. Stops early when `stop.requested`. `step_model` is `model` or its compiled version.
    Returns (metrics, steps done in the epoch)."""
    training = optimizer is not None
    if training:
        model.train_mode(args.train_what)
    else:
        model.eval()
    metrics = PretextMetrics(step_similarity=not training)
    steps_per_epoch = first_step + len(loader)
    stage = "train" if training else "val"
    batches = DeviceBatches(loader, augmenter, device, args.prefetch, augmenter.generator)
    progress = tqdm(batches, desc=f"{stage} epoch {epoch + 1}", leave=False, dynamic_ncols=True,
                    initial=first_step, total=steps_per_epoch)
    step = first_step
    with batches:
        for batch in progress:
            if batch.problems:
                bad_samples.add(batch.problems)
            if training:
                loss, scores, targets = train_step(step_model, optimizer, batch.inputs, device, args.amp,
                                                   args.score_products)
            else:
                with torch.no_grad():
                    loss, scores, targets = pretext_loss(step_model, batch.inputs, device, args.amp,
                                                         args.score_products)
            if training and epoch == 0 and step == 0:
                writer.add_image("input_clip", make_grid(denormalize(batch.inputs[0].float()),
                                                         nrow=batch.inputs.shape[1]), epoch)
            metrics.update(loss, scores, targets)
            if not training and args.diagnose_future and args.pred_step > 1:
                # After update(): a CUDA-graph replay (--compile reduce-overhead) reuses the first pass's outputs.
                metrics.update_reversed(reversed_future_scores(step_model, batch.inputs, args.pred_step, device,
                                                               args.amp, args.score_products))
            step += 1
            if step % args.print_freq == 0:
                summary = metrics.summary()
                check_finite(summary, epoch, step)
                progress.set_postfix(loss=f"{summary['loss']:.3f}", top1=f"{summary['top1']:.3f}")
                if training:
                    for key, value in summary.items():
                        writer.add_scalar(f"local/{key}", value, epoch * steps_per_epoch + step)
            if stop is not None and stop.requested:
                break
    progress.close()
    summary = metrics.summary()
    if summary:
        check_finite(summary, epoch, step)
    return summary, step


def epoch_line(epoch: int, epochs: int, train: dict, val: dict, checkpoint: str) -> str:
    """The console line of one epoch (`val` is empty when --val_freq skipped validation). The shares of wrong
    validation picks say why a pretext is stuck: mostly temporal at the 1/3 plateau (right video and position,
    wrong step), mostly other-video when only positions are told apart. The targets' similarity across steps
    says whether the temporal picks are the prediction's fault or the encoder's: near 1, the encoder gives
    every frame of a video the same output, and no predictor can tell the steps apart. The top-1 with the
    predicted frames reversed says whether the top-1 comes from what those frames show: if it hardly drops, the
    steps are not told apart, or by where they sit or the context the targets see (PretextMetrics.update_reversed)."""
    line = f"epoch {epoch}/{epochs}  train loss {train['loss']:.4f} top1 {train['top1']:.4f}  "
    if val:
        line += (f"val loss {val['loss']:.4f} top1 {val['top1']:.4f} top3 {val['top3']:.4f} top5 {val['top5']:.4f}  "
                 f"wrong picks: spatial {val['wrong_spatial']:.2f} temporal {val['wrong_temporal']:.2f} "
                 f"other video {val['wrong_easy']:.2f}  ")
        if "step_similarity" in val:
            line += f"targets across steps: cos {val['step_similarity']:.2f}  "
        if "top1_reversed" in val:
            line += f"future reversed: top1 {val['top1_reversed']:.4f}  "
    return line + f"-> {checkpoint}"


def train(args: argparse.Namespace) -> Path:
    device = resolve_speed_flags(args)
    loaders = build_loaders(args, device)

    torch.manual_seed(args.seed)
    model = CPCTrans(args.net, args.num_seq, args.pred_step, args.attn, args.pos_enc, args.gru_dropout)
    if args.pretrain:
        print(load_pretrained(model, args.pretrain))
    if args.train_what == "last":
        model.encoder.backbone.requires_grad_(False)
    step_model = prepare_model(model, device, args.compile)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = adam(parameters, device, args.lr, args.wd)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=100, gamma=0.5)
    run_dir = run_folder(args, run_name(args))
    model_dir = run_dir / "model"

    best_acc, start_step, resume_rng = resume_training(args, model, model.config, optimizer, scheduler,
                                                       model_dir)

    recipe = pretraining_recipe(args.color_aug, args.gray, args.resize)
    augmenters = {stage: ClipAugment(recipe, args.img_dim, compiled=args.compile is not None)
                  for stage in ("train", "val")}
    bad_samples = BadSamples(args.max_bad_samples)
    print(f"pretraining on {device} ({speed_summary(args)}, score_products={args.score_products}); "
          f"logs and checkpoints in {run_dir}")

    val_metrics = {}
    with stage_writers(run_dir) as writers, GracefulStop() as stop:
        for epoch in range(args.start_epoch, args.epochs):
            skip = start_step if epoch == args.start_epoch else 0
            begin_epoch(loaders["train"], augmenters["train"], args.seed, epoch, skip, resume_rng, device)
            train_metrics, steps = run_epoch(model, step_model, loaders["train"], augmenters["train"], optimizer,
                                             device, epoch, args, bad_samples, writers["train"], first_step=skip,
                                             stop=stop)
            if steps < skip + len(loaders["train"]):
                rng = rng_snapshot(augmenters["train"], device)
                state = training_state(model, model.config, optimizer, scheduler, args, epoch, steps, best_acc, rng)
                save_interrupted(state, model_dir, stop.requested)
                return model_dir
            val_metrics = {}
            if validates(args, epoch):
                begin_validation(loaders["val"], augmenters["val"], args.seed, epoch)
                val_metrics, _ = run_epoch(model, step_model, loaders["val"], augmenters["val"], None, device, epoch,
                                           args, bad_samples)
            scheduler.step()
            for stage, metrics in (("train", train_metrics), ("val", val_metrics)):
                for key, value in metrics.items():
                    writers[stage].add_scalar(f"global/{key}", value, epoch + 1)
            is_best, best_acc = best_after(val_metrics, best_acc)
            path = save_epoch(training_state(model, model.config, optimizer, scheduler, args, epoch + 1, 0, best_acc,
                                             val_metrics=val_metrics),
                              model_dir, epoch + 1, is_best, saves(args, epoch, bool(stop.requested)))
            tqdm.write(epoch_line(epoch + 1, args.epochs, train_metrics, val_metrics, saved_as(path)))
            if stop.requested:
                print(f"stopped by {stop.requested} after epoch {epoch + 1}; continue with --resume {path}")
                return model_dir
    warning = plateau_warning(val_metrics, args.pred_step, model_dir, args.color_aug)
    if warning:
        print(warning)
    return model_dir


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        train(args)
    except (DataError, CheckpointError, TrainingDiverged, ValueError) as error:
        sys.exit(f"error: {user_error(error)}")


if __name__ == "__main__":
    main()
