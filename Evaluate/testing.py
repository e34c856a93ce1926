"""Testing a finetuned classifier (Evaluate/test.py --test): every window of every test video, the softmax averaged
per video, top-1/top-5, a JSON record and a confusion matrix next to the checkpoint. Under torchrun each process
tests its share of the windows, each once, and rank 0 reports what they found together."""
import argparse
import json
import time
from functools import partial
from pathlib import Path

import torch
from torch.nn import functional as F
from tqdm import tqdm

from CPCTrans.augment import ClipAugment, evaluation_recipe, ten_crop
from CPCTrans.checkpoint import CheckpointError, load
from CPCTrans.data import make_loader
from CPCTrans.device import autocast
from CPCTrans.prefetch import DeviceBatches
from CPCTrans.runtime import csv_root, prepare_model, start_processes
from Evaluate.classifier import VideoClassifier
from Evaluate.confusion import confusion_matrix, save_confusion_png
from Evaluate.inputs import architecture, class_names, clip_dataset, fill_data_flags, require_clip_flags
from Evaluate.report import report_run_of
from Evaluate.video_mean import VideoMean


@torch.no_grad()
def test(args: argparse.Namespace) -> dict:
    """Tests --test; returns what it writes to <checkpoint>.test.json."""
    state = load(args.test, "classifier")
    config = state["model_config"]
    require_clip_flags(args, state, args.test)
    fill_data_flags(args, config)
    device, processes = start_processes(args)
    classes = class_names(args)
    if len(classes) != config["num_classes"]:
        raise CheckpointError(f"{args.test}: has {config['num_classes']} classes but {csv_root(args) / 'classInd.txt'} "
                              f"lists {len(classes)}; test on the dataset it was finetuned on")
    dataset = clip_dataset("test", args, len(classes), windows=True)
    loader = make_loader(dataset, args.batch_size, args.workers, train=False, device=device, rank=processes.rank,
                         world_size=processes.world_size)
    model = VideoClassifier(config["num_classes"], config["net"], **architecture(args, config, args.test),
                            dropout=config["dropout"])
    model.load_state_dict(state["state_dict"])
    model.eval()
    step_model = prepare_model(model, device, args.compile)
    views = 10 if args.ten_crop else 1
    transform = (partial(ten_crop, img_dim=args.img_dim, resize=args.resize) if args.ten_crop
                 else ClipAugment(evaluation_recipe(args.resize), args.img_dim))

    num_videos = len(dataset.videos)
    probabilities = VideoMean(num_videos, len(classes), device)
    loss_sum = torch.zeros((), device=device)
    started = time.perf_counter()
    with DeviceBatches(loader, transform, device, args.prefetch) as batches:
        for batch in tqdm(batches, desc="test", dynamic_ncols=True, disable=not processes.is_main):
            with autocast(device, args.amp):
                logits = step_model(batch.inputs).float()
            window_probabilities = logits.softmax(dim=1).view(len(batch.labels), views, -1).mean(dim=1)
            loss_sum += F.nll_loss(window_probabilities.clamp_min(1e-12).log(), batch.labels, reduction="sum")
            probabilities.add(batch.videos, window_probabilities)
    probabilities = probabilities.result(processes)
    loss_sum = processes.sum(loss_sum)
    elapsed = time.perf_counter() - started
    if not processes.is_main:
        return {}
    labels = torch.tensor([record.label for record in dataset.videos])
    top5 = probabilities.topk(min(5, len(classes)), dim=1).indices == labels[:, None]
    result = {"top1": top5[:, 0].float().mean().item(), "top5": top5.any(dim=1).float().mean().item(),
              "loss": loss_sum.item() / len(dataset), "videos_tested": num_videos,
              "videos_skipped": dataset.num_skipped, "windows": len(dataset), "dataset": args.dataset,
              "split": args.split, "num_seq": args.num_seq, "ds": args.ds, "img_dim": args.img_dim,
              "ten_crop": args.ten_crop, "checkpoint": str(args.test), "videos_per_second": num_videos / elapsed}
    matrix = confusion_matrix(labels, probabilities.argmax(dim=1), len(classes))
    result.update(classes=classes, confusion=matrix.tolist())
    print(f"Acc top1: {result['top1']:.4f} Acc top5: {result['top5']:.4f}")
    print(f"{num_videos} videos ({len(dataset)} windows) tested, {dataset.num_skipped} skipped, "
          f"{result['videos_per_second']:.1f} videos/s on {device}")
    checkpoint = Path(args.test)
    suffix = ".tencrop" if args.ten_crop else ""
    json_path = checkpoint.with_name(f"{checkpoint.name}.test{suffix}.json")
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    png_path = checkpoint.with_name(f"{checkpoint.name}{suffix}.confusion.png")
    save_confusion_png(matrix, png_path, f"{args.dataset} split {args.split}: top1 {result['top1']:.3f} "
                                         f"(rows true, columns predicted)")
    print(f"wrote {json_path} and {png_path}")
    report_run_of(checkpoint)
    return result
