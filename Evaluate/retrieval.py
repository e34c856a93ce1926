"""Nearest-neighbour video retrieval (Evaluate/test.py --retrieval), as CoCLR and MemDPC report it: test videos
query training videos by their features; a linear probe is fitted to the same features. Under torchrun each
process computes the features of its share of the windows and rank 0 retrieves with all of them."""
import argparse
import json
from pathlib import Path

import torch
from torch.nn import functional as F
from tqdm import tqdm

from CPCTrans.augment import ClipAugment, evaluation_recipe
from CPCTrans.checkpoint import load, load_pretrained
from CPCTrans.data import make_loader
from CPCTrans.device import autocast
from CPCTrans.prefetch import DeviceBatches
from CPCTrans.distributed import Processes
from CPCTrans.runtime import prepare_model, run_folder, start_processes
from Evaluate.classifier import VideoClassifier
from Evaluate.feature_probe import feature_probe_top1
from Evaluate.inputs import (architecture, class_names, clip_dataset, fill_data_flags, report_plateau,
                             require_clip_flags)
from Evaluate.report import report_run_of
from Evaluate.video_mean import VideoMean

RECALL_AT = (1, 5, 10, 20)
SHOWN_QUERIES = 6  # test videos whose nearest training videos the JSON keeps, for the run's report


@torch.no_grad()
def video_features(model, batches, device: torch.device, amp: bool, num_videos: int, desc: str = "features",
                   processes: Processes = Processes()) -> torch.Tensor:
    """(num_videos, C) on the CPU: each video's classifier input (model.features) averaged over its windows, those
    of every process. `batches` yields DeviceBatch (CPCTrans.prefetch)."""
    model.eval()
    features = VideoMean(num_videos, model.encoder.width, device)
    for batch in tqdm(batches, desc=desc, dynamic_ncols=True, leave=False, disable=not processes.is_main):
        with autocast(device, amp):
            features.add(batch.videos, model.features(batch.inputs).float())
    return features.result(processes)


def nearest_videos(train_features: torch.Tensor, test_features: torch.Tensor, k: int) -> torch.Tensor:
    """(test videos, k): the indices of each test video's k nearest training videos, nearest first (cosine
    similarity after centring both sets on the training mean)."""
    centre = train_features.mean(dim=0)
    gallery = F.normalize(train_features - centre, dim=1)
    queries = F.normalize(test_features - centre, dim=1)
    return (queries @ gallery.t()).topk(min(k, len(gallery)), dim=1).indices


def recall_at_k(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                test_labels: torch.Tensor, ks=RECALL_AT) -> dict[str, float]:
    """R@k: the share of test videos with a same-class video among their k nearest training videos (cosine
    similarity after centring both sets on the training mean)."""
    nearest = nearest_videos(train_features, test_features, max(ks))
    hits = train_labels[nearest] == test_labels[:, None]
    return {f"R@{k}": hits[:, :k].any(dim=1).float().mean().item() for k in ks}


def random_retrieval_path(args: argparse.Namespace, attn: str, pos_enc: str) -> Path:
    """Where --retrieval random writes its JSON (a checkpoint's goes next to the checkpoint)."""
    return run_folder(args, f"random_attn-{attn}_pos-{pos_enc}_seed{args.seed}.retrieval.json")


@torch.no_grad()
def retrieve(args: argparse.Namespace) -> dict:
    """Nearest-neighbour retrieval with the features of --retrieval: a pretraining or finetuned checkpoint,
    or a random initialisation (seeded by --seed). Every video's features average its test windows. The same
    features also get a linear probe fitted to convergence (Evaluate.feature_probe)."""
    state = load(args.retrieval) if args.retrieval != "random" else None
    saved = {**state["args"], **state["model_config"]} if state is not None else {}
    if state is not None:
        require_clip_flags(args, state, args.retrieval)
    fill_data_flags(args, saved)
    device, processes = start_processes(args)
    classes = class_names(args)
    torch.manual_seed(args.seed)
    model = VideoClassifier(len(classes), saved.get("net", args.net),
                            **architecture(args, state and state["model_config"], args.retrieval))
    if state is not None:
        print(load_pretrained(model, args.retrieval, state))
        report_plateau(state, args.retrieval)
    step_model = prepare_model(model, device, args.compile)
    augmenter = ClipAugment(evaluation_recipe(args.resize), args.img_dim)

    features, labels, videos = {}, {}, {}
    for stage in ("train", "test"):
        dataset = clip_dataset(stage, args, len(classes), windows=True)
        loader = make_loader(dataset, args.batch_size, args.workers, train=False, device=device,
                             rank=processes.rank, world_size=processes.world_size)
        with DeviceBatches(loader, augmenter, device, args.prefetch) as batches:
            features[stage] = video_features(step_model, batches, device, args.amp, len(dataset.videos),
                                             f"{stage} features", processes)
        labels[stage] = torch.tensor([record.label for record in dataset.videos])
        videos[stage] = dataset.videos
    if not processes.is_main:
        return {}
    result = {**recall_at_k(features["train"], labels["train"], features["test"], labels["test"]),
              "probe_top1": feature_probe_top1(features["train"], labels["train"], features["test"],
                                               labels["test"], len(classes)),
              "train_videos": len(labels["train"]), "test_videos": len(labels["test"]), "dataset": args.dataset,
              "split": args.split, "num_seq": args.num_seq, "ds": args.ds, "img_dim": args.img_dim,
              "checkpoint": args.retrieval, **model.config,
              "examples": examples(videos, nearest_videos(features["train"], features["test"], 5), classes)}
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
    if state is not None:
        report_run_of(json_path)
    return result


def examples(videos: dict, nearest: torch.Tensor, classes: list[str]) -> list[dict]:
    """The first SHOWN_QUERIES test videos and their nearest training videos: frame folder, frames, class."""
    def described(record) -> dict:
        return {"folder": record.folder, "frames": record.num_frames, "class": classes[record.label]}
    return [{"query": described(videos["test"][query]),
             "neighbours": [described(videos["train"][index]) for index in nearest[query].tolist()]}
            for query in range(min(SHOWN_QUERIES, len(videos["test"])))]
