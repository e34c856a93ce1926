"""Finetune, linearly probe, test a CPCTrans representation on action classification, or retrieve with it.

    python Evaluate/test.py --net resnet18 --dataset ucf101 --batch_size 16 --img_dim 224 \
        --pretrain X.pth.tar --train_what ft --epochs 300 --num_seq 7 --pred_step 3
    python Evaluate/test.py --net resnet18 --dataset ucf101 --batch_size 16 --img_dim 224 --test finetuned.pth.tar
    python Evaluate/test.py --dataset ucf101 --retrieval X.pth.tar      (nearest-neighbour R@1/5/10/20, and a
                                                                        linear probe on the same frozen features)
"""
import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path

import torch
from torch.nn import functional as F
from tqdm import tqdm

from CPCTrans.augment import ClipAugment, evaluation_recipe, finetuning_recipes, ten_crop
from CPCTrans.checkpoint import CheckpointError, load, load_pretrained, training_state
from CPCTrans.convgru import GRU_DROPOUT
from CPCTrans.cpc import plateau_warning
from CPCTrans.data import BadSamples, ClipDataset, DataError, make_loader, read_class_names, split_dataset
from CPCTrans.encoder import ATTENTION_KINDS, POSITION_KINDS
from CPCTrans.prefetch import DeviceBatches
from CPCTrans.resume import (GracefulStop, begin_epoch, begin_validation, resume_training, rng_snapshot,
                             save_interrupted)
from CPCTrans.runtime import (REPO_ROOT, adam, add_gru_dropout_flag, add_resize_flag, add_run_flags, add_speed_flags,
                              autocast, best_after, check_img_dim, csv_root, fraction, prepare_model,
                              resolve_speed_flags, run_folder, save_epoch, saved_as, saves, speed_summary, split_csv,
                              stage_writers, user_error, validates)
from Evaluate.classifier import TRAIN_WHAT, VideoClassifier
from Evaluate.confusion import confusion_matrix, save_confusion_png
from Evaluate.feature_probe import feature_probe_top1
from Evaluate.retrieval import recall_at_k, video_features
from Evaluate.video_mean import VideoMean

# Finetuning defaults; --test takes what it is not given from the checkpoint.
DATA_DEFAULTS = {"dataset": "ucf101", "split": 1, "num_seq": 5, "ds": 3, "img_dim": 128, "resize": "nearest"}
# The reference validates finetuning on a fixed share of the test split: more of HMDB51's, which is smaller.
VAL_FRACTIONS = {"hmdb51": 0.4}
VAL_FRACTION = 0.3
# The reference's architecture; a checkpoint's model_config overrides it.
ARCHITECTURE_DEFAULTS = {"attn": "full", "pos_enc": "none"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="CPCTrans finetuning / linear probe / testing")
    parser.add_argument("--net", default="resnet18", choices=["resnet18"])
    parser.add_argument("--model", default="lc", choices=["lc"])
    parser.add_argument("--dataset", default=None, help="folder of CSVs under ProcessData/data/ (default ucf101)")
    parser.add_argument("--split", default=None, type=int, choices=[1, 2, 3])
    parser.add_argument("--num_seq", default=None, type=int, help="frames per clip (default 5)")
    parser.add_argument("--pred_step", default=3, type=int, help="accepted for the reference's command; unused")
    parser.add_argument("--ds", default=None, type=int, help="frame stride (default 3)")
    parser.add_argument("--batch_size", default=16, type=int)
    parser.add_argument("--lr", default=1e-3, type=float)
    parser.add_argument("--wd", default=1e-3, type=float, help="weight decay")
    parser.add_argument("--dropout", default=0.5, type=float)
    parser.add_argument("--resume", default="", help="finetuning checkpoint to continue, or 'latest' of this run")
    parser.add_argument("--pretrain", default="random", help="pretraining checkpoint, or 'random'")
    parser.add_argument("--test", default="", help="finetuned checkpoint to evaluate")
    parser.add_argument("--ten_crop", action="store_true",
                        help="with --test: average ten views of each window (corners and centre, each also flipped)")
    parser.add_argument("--retrieval", default="",
                        help="pretraining or finetuned checkpoint, or 'random': test videos query training videos "
                             "by their features; prints and saves R@1/5/10/20, and the top-1 of a linear probe fitted "
                             "to the same features")
    parser.add_argument("--epochs", default=300, type=int)
    parser.add_argument("--start_epoch", default=0, type=int)
    parser.add_argument("--print_freq", default=5, type=int)
    parser.add_argument("--reset_lr", action="store_true")
    parser.add_argument("--prefix", default="tmp")
    parser.add_argument("--train_what", default="ft", choices=TRAIN_WHAT,
                        help="ft: all, encoder at lr/10; all: all at lr; last: linear probe")
    parser.add_argument("--color_jitter", default=None, choices=("on", "off"),
                        help="finetuning's colour jitter (the reference's, p=0.3 per clip). Default on, but off for "
                             "--train_what last: a frozen encoder cannot learn to ignore colour, so a linear probe "
                             "trains on crops and flips only, as linear evaluations commonly do (README)")
    parser.add_argument("--img_dim", default=None, type=int, help="default 128")
    add_resize_flag(parser, None)
    add_gru_dropout_flag(parser)
    parser.add_argument("--val_fraction", default=None, type=fraction,
                        help="validate finetuning on this fixed random share of the test split's videos (default: "
                             "the reference's 0.3, 0.4 for hmdb51); --test and --retrieval use every video")
    add_run_flags(parser, REPO_ROOT / "Evaluate")
    add_speed_flags(parser)
    parser.add_argument("--attn", default=None, choices=ATTENTION_KINDS,
                        help="for a random init (default full); otherwise taken from the checkpoint")
    parser.add_argument("--pos_enc", default=None, choices=POSITION_KINDS,
                        help="for a random init (default none); otherwise taken from the checkpoint")
    args = parser.parse_args(argv)
    check_img_dim(parser, args.img_dim)
    if args.test and args.retrieval:
        parser.error("--test and --retrieval are separate runs; give one of them")
    if args.ten_crop and not args.test:
        parser.error("--ten_crop is a test-time option; use it with --test")
    if args.color_jitter is None:
        args.color_jitter = "off" if args.train_what == "last" else "on"
    return args


def fill_data_flags(args: argparse.Namespace, saved: dict | None = None) -> None:
    """Flags not given on the command line come from `saved` (a checkpoint's), else the defaults."""
    for key, default in DATA_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, (saved or {}).get(key, default))
    if args.val_fraction is None:
        args.val_fraction = VAL_FRACTIONS.get(args.dataset, VAL_FRACTION)


def require_clip_flags(args: argparse.Namespace, state: dict, checkpoint: str) -> None:
    """A checkpoint of the reference implementation records neither the clip length nor the image size."""
    missing = [f"--{key}" for key in ("num_seq", "img_dim") if getattr(args, key) is None]
    if "converted_from_reference" in state and missing:
        raise CheckpointError(f"{checkpoint}: a checkpoint of the reference implementation does not record "
                              f"{' or '.join(missing)}; give {' and '.join(missing)} as it was trained with")


def architecture(args: argparse.Namespace, config: dict | None, checkpoint: str) -> dict:
    """--attn and --pos_enc: a checkpoint's choice when there is one (a conflicting flag is refused), else the
    flags or the reference's."""
    chosen = {}
    for key, default in ARCHITECTURE_DEFAULTS.items():
        flag = getattr(args, key)
        saved = config.get(key, default) if config is not None else None
        if saved is not None and flag and flag != saved:
            raise CheckpointError(f"{checkpoint}: was trained with --{key} {saved}; drop --{key} {flag}")
        chosen[key] = saved or flag or default
    return chosen


def class_names(args) -> list[str]:
    return read_class_names(csv_root(args) / "classInd.txt")


def report_plateau(state: dict, checkpoint: str) -> None:
    """Says so when a pretraining checkpoint's last validation sits on the pretext's plateau (cpc.plateau_warning)."""
    if state["kind"] != "cpc" or not state.get("val_metrics"):
        return
    color_aug = state["args"].get("color_aug", "frame")  # checkpoints from before the flag pretrained per frame
    warning = plateau_warning(state["val_metrics"], state["model_config"]["pred_step"], checkpoint, color_aug)
    if warning:
        print(warning)


def clip_dataset(stage: str, args, num_classes: int, windows: bool, fraction: float = 1.0) -> ClipDataset:
    """Training and validation replace unreadable clips; testing (windows) must read every one."""
    return split_dataset(split_csv(args, stage), num_classes, args.num_seq, args.ds, windows=windows,
                         encoded=args.decode == "gpu", replace_bad=not windows, fraction=fraction)


def run_epoch(model, step_model, loader, augmenter, optimizer, device, args, epoch, writer, bad_samples,
              first_step=0, stop=None):
    """One pass over `loader`, whose first `first_step` steps were done before a resume; trains when an
    optimizer is given and stops early when `stop.requested`. `step_model` is `model` or its compiled version.
    Returns ({loss, top1, top5} over the clips seen, steps done in the epoch)."""
    training = optimizer is not None
    if training:
        model.train_mode(args.train_what)
    else:
        model.eval()
    totals = torch.zeros(3, device=device)
    seen = 0
    steps_per_epoch = first_step + len(loader)
    batches = DeviceBatches(loader, augmenter, device, args.prefetch, augmenter.generator)
    progress = tqdm(batches, desc=f"{'train' if training else 'val'} epoch {epoch + 1}", leave=False,
                    dynamic_ncols=True, initial=first_step, total=steps_per_epoch)
    step = first_step
    with batches:
        for batch in progress:
            if batch.problems:
                bad_samples.add(batch.problems)
            labels = batch.labels
            with torch.set_grad_enabled(training), autocast(device, args.amp):
                logits = step_model(batch.inputs).float()
                loss = F.cross_entropy(logits, labels)
            if training:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices == labels[:, None]
            totals += torch.stack([loss.detach() * len(labels), top5[:, 0].sum(), top5.any(dim=1).sum()])
            seen += len(labels)
            step += 1
            if step % args.print_freq == 0:
                loss_mean, top1 = (totals[:2] / seen).tolist()
                progress.set_postfix(loss=f"{loss_mean:.3f}", top1=f"{top1:.3f}")
                if training:
                    writer.add_scalar("local/loss", loss_mean, epoch * steps_per_epoch + step)
                    writer.add_scalar("local/top1", top1, epoch * steps_per_epoch + step)
            if stop is not None and stop.requested:
                break
    progress.close()
    loss_mean, top1, top5 = (totals / max(seen, 1)).tolist()
    return {"loss": loss_mean, "top1": top1, "top5": top5}, step


def run_name(args) -> str:
    pretrain = "random" if args.pretrain == "random" else Path(args.pretrain).name
    name = (f"{args.dataset}-{args.img_dim}-split{args.split}_{args.net}_{args.model}_bs{args.batch_size}"
            f"_lr{args.lr}_wd{args.wd}_dp{args.dropout}_seq{args.num_seq}_ds{args.ds}_train-{args.train_what}"
            f"_pt={pretrain}")
    # Names the departure from the reference's augmentation: runs from before the flag had jitter on.
    if args.color_jitter == "off":
        name += "_jitter-off"
    if args.resize != "nearest":
        name += f"_resize-{args.resize}"
    if args.gru_dropout != GRU_DROPOUT:
        name += f"_grudp{args.gru_dropout}"
    # A random init's architecture is its flags' (a checkpoint's is in its name); defaults keep the plain name.
    for key, default in ARCHITECTURE_DEFAULTS.items():
        if args.pretrain == "random" and getattr(args, key) not in (None, default):
            name += f"_{key}-{getattr(args, key)}"
    return name


def random_retrieval_path(args: argparse.Namespace, attn: str, pos_enc: str) -> Path:
    """Where --retrieval random writes its JSON (a checkpoint's goes next to the checkpoint)."""
    return run_folder(args, f"random_attn-{attn}_pos-{pos_enc}_seed{args.seed}.retrieval.json")


def finetune(args: argparse.Namespace) -> Path:
    fill_data_flags(args)
    torch.manual_seed(args.seed)
    device = resolve_speed_flags(args)
    classes = class_names(args)
    pretrained = load(args.pretrain, "cpc") if args.pretrain != "random" else None
    loaders = {stage: make_loader(clip_dataset(csv_name, args, len(classes), windows=False,
                                               fraction=1.0 if stage == "train" else args.val_fraction),
                                  args.batch_size, args.workers, stage == "train", device, args.seed)
               for stage, csv_name in (("train", "train"), ("val", "test"))}

    model = VideoClassifier(len(classes), args.net, **architecture(args, pretrained and pretrained["model_config"],
                                                                   args.pretrain), dropout=args.dropout,
                            gru_dropout=args.gru_dropout)
    if pretrained is not None:
        print(load_pretrained(model, args.pretrain, pretrained))
        report_plateau(pretrained, args.pretrain)
    step_model = prepare_model(model, device, args.compile)
    optimizer = adam(model.param_groups(args.train_what, args.lr), device, args.lr, args.wd)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=100, gamma=0.1)
    config = {**model.config, "num_seq": args.num_seq, "ds": args.ds, "img_dim": args.img_dim,
              "resize": args.resize, "dataset": args.dataset, "split": args.split}

    run_dir = run_folder(args, run_name(args))
    model_dir = run_dir / "model"
    best_acc, start_step, resume_rng = resume_training(args, model, config, optimizer, scheduler, model_dir)

    train_recipe, val_recipe = finetuning_recipes(args.color_jitter == "on", args.resize)
    compiled = args.compile is not None
    augmenters = {"train": ClipAugment(train_recipe, args.img_dim, compiled=compiled),
                  "val": ClipAugment(val_recipe, args.img_dim, compiled=compiled)}
    bad_samples = BadSamples(args.max_bad_samples)
    print(f"finetuning ({args.train_what}) on {device} ({speed_summary(args)}); logs and checkpoints in {run_dir}")
    with stage_writers(run_dir) as writers, GracefulStop() as stop:
        for epoch in range(args.start_epoch, args.epochs):
            skip = start_step if epoch == args.start_epoch else 0
            begin_epoch(loaders["train"], augmenters["train"], args.seed, epoch, skip, resume_rng, device)
            train_results, steps = run_epoch(model, step_model, loaders["train"], augmenters["train"], optimizer,
                                             device, args, epoch, writers["train"], bad_samples, skip, stop)
            if steps < skip + len(loaders["train"]):
                save_interrupted(training_state(model, config, optimizer, scheduler, args, epoch, steps, best_acc,
                                                rng_snapshot(augmenters["train"], device)), model_dir, stop.requested)
                return model_dir
            val_results = {}
            if validates(args, epoch):
                begin_validation(loaders["val"], augmenters["val"], args.seed, epoch)
                val_results, _ = run_epoch(model, step_model, loaders["val"], augmenters["val"], None, device, args,
                                           epoch, writers["val"], bad_samples)
            for stage, results in (("train", train_results), ("val", val_results)):
                for key, value in results.items():
                    writers[stage].add_scalar(f"global/{key}", value, epoch + 1)
            scheduler.step()
            is_best, best_acc = best_after(val_results, best_acc)
            path = save_epoch(training_state(model, config, optimizer, scheduler, args, epoch + 1, 0, best_acc,
                                             val_metrics=val_results),
                              model_dir, epoch + 1, is_best, saves(args, epoch, bool(stop.requested)))
            validation = f"val loss {val_results['loss']:.4f} top1 {val_results['top1']:.4f}  " if val_results else ""
            tqdm.write(f"epoch {epoch + 1}/{args.epochs}  train loss {train_results['loss']:.4f} "
                       f"top1 {train_results['top1']:.4f}  {validation}-> {saved_as(path)}")
            if stop.requested:
                print(f"stopped by {stop.requested} after epoch {epoch + 1}; continue with --resume {path}")
                return model_dir
    best = sorted(model_dir.glob("model_best_epoch*.pth.tar"))
    if best:
        print(f"best checkpoint: {best[-1]}")
    return model_dir


@torch.no_grad()
def test(args: argparse.Namespace) -> dict:
    state = load(args.test, "classifier")
    config = state["model_config"]
    require_clip_flags(args, state, args.test)
    fill_data_flags(args, config)
    device = resolve_speed_flags(args)
    classes = class_names(args)
    if len(classes) != config["num_classes"]:
        raise CheckpointError(f"{args.test}: has {config['num_classes']} classes but {csv_root(args) / 'classInd.txt'} "
                              f"lists {len(classes)}; test on the dataset it was finetuned on")
    dataset = clip_dataset("test", args, len(classes), windows=True)
    loader = make_loader(dataset, args.batch_size, args.workers, train=False, device=device)
    model = VideoClassifier(config["num_classes"], config["net"], **architecture(args, config, args.test),
                            dropout=config["dropout"])
    model.load_state_dict(state["state_dict"])
    model.eval()
    step_model = prepare_model(model, device, args.compile)
    views = 10 if args.ten_crop else 1
    transform = (partial(ten_crop, img_dim=args.img_dim, resize=args.resize) if args.ten_crop
                 else ClipAugment(evaluation_recipe(args.resize), args.img_dim))

    num_videos = len(dataset.videos)
    probabilities = VideoMean(num_videos, device)
    loss_sum = torch.zeros((), device=device)
    started = time.perf_counter()
    with DeviceBatches(loader, transform, device, args.prefetch) as batches:
        for batch in tqdm(batches, desc="test", dynamic_ncols=True):
            with autocast(device, args.amp):
                logits = step_model(batch.inputs).float()
            window_probabilities = logits.softmax(dim=1).view(len(batch.labels), views, -1).mean(dim=1)
            loss_sum += F.nll_loss(window_probabilities.clamp_min(1e-12).log(), batch.labels, reduction="sum")
            probabilities.add(batch.videos, window_probabilities)
    probabilities = probabilities.result()
    elapsed = time.perf_counter() - started
    labels = torch.tensor([record.label for record in dataset.videos])
    top5 = probabilities.topk(min(5, len(classes)), dim=1).indices == labels[:, None]
    result = {"top1": top5[:, 0].float().mean().item(), "top5": top5.any(dim=1).float().mean().item(),
              "loss": loss_sum.item() / len(dataset), "videos_tested": num_videos,
              "videos_skipped": dataset.num_skipped, "windows": len(dataset), "dataset": args.dataset,
              "split": args.split, "num_seq": args.num_seq, "ds": args.ds, "img_dim": args.img_dim,
              "ten_crop": args.ten_crop, "checkpoint": str(args.test), "videos_per_second": num_videos / elapsed}
    print(f"Acc top1: {result['top1']:.4f} Acc top5: {result['top5']:.4f}")
    print(f"{num_videos} videos ({len(dataset)} windows) tested, {dataset.num_skipped} skipped, "
          f"{result['videos_per_second']:.1f} videos/s on {device}")
    checkpoint = Path(args.test)
    suffix = ".tencrop" if args.ten_crop else ""
    json_path = checkpoint.with_name(f"{checkpoint.name}.test{suffix}.json")
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    png_path = checkpoint.with_name(f"{checkpoint.name}{suffix}.confusion.png")
    matrix = confusion_matrix(labels, probabilities.argmax(dim=1), len(classes))
    save_confusion_png(matrix, png_path, f"{args.dataset} split {args.split}: top1 {result['top1']:.3f} "
                                         f"(rows true, columns predicted)")
    print(f"wrote {json_path} and {png_path}")
    return result


@torch.no_grad()
def retrieve(args: argparse.Namespace) -> dict:
    """Nearest-neighbour retrieval with the features of --retrieval: a pretraining or finetuned checkpoint,
    or a random initialisation (seeded by --seed). Every video's features average its test windows. The same
    features also get a linear probe fitted to convergence (Evaluate.feature_probe)."""
    state = load(args.retrieval) if args.retrieval != "random" else None
    saved = {**state.get("args", {}), **state["model_config"]} if state is not None else {}
    if state is not None:
        require_clip_flags(args, state, args.retrieval)
    fill_data_flags(args, saved)
    device = resolve_speed_flags(args)
    classes = class_names(args)
    torch.manual_seed(args.seed)
    model = VideoClassifier(len(classes), saved.get("net", args.net),
                            **architecture(args, state and state["model_config"], args.retrieval))
    if state is not None:
        print(load_pretrained(model, args.retrieval, state))
        report_plateau(state, args.retrieval)
    step_model = prepare_model(model, device, args.compile)
    augmenter = ClipAugment(evaluation_recipe(args.resize), args.img_dim)

    features, labels = {}, {}
    for stage in ("train", "test"):
        dataset = clip_dataset(stage, args, len(classes), windows=True)
        loader = make_loader(dataset, args.batch_size, args.workers, train=False, device=device)
        with DeviceBatches(loader, augmenter, device, args.prefetch) as batches:
            features[stage] = video_features(step_model, batches, device, args.amp, len(dataset.videos),
                                             desc=f"{stage} features")
        labels[stage] = torch.tensor([record.label for record in dataset.videos])
    result = {**recall_at_k(features["train"], labels["train"], features["test"], labels["test"]),
              "probe_top1": feature_probe_top1(features["train"], labels["train"], features["test"],
                                               labels["test"], len(classes)),
              "train_videos": len(labels["train"]), "test_videos": len(labels["test"]), "dataset": args.dataset,
              "split": args.split, "num_seq": args.num_seq, "ds": args.ds, "img_dim": args.img_dim,
              "checkpoint": args.retrieval, **model.config}
    print("retrieval " + " ".join(f"{key}: {result[key]:.4f}" for key in result if key.startswith("R@")))
    print(f"linear probe on the same features (logistic regression, converged): top1 {result['probe_top1']:.4f}")
    if state is not None:
        path = Path(args.retrieval)
        json_path = path.with_name(path.name + ".retrieval.json")
    else:
        json_path = random_retrieval_path(args, model.config["attn"], model.config["pos_enc"])
        json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {json_path}")
    return result


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        if args.retrieval:
            retrieve(args)
        elif args.test:
            test(args)
        else:
            finetune(args)
    except (DataError, CheckpointError, ValueError) as error:
        sys.exit(f"error: {user_error(error)}")


if __name__ == "__main__":
    main()
