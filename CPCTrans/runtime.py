"""What the training and testing CLIs share: device and speed flags, autocast, Adam, checkpoint rotation, the
validation schedule, tensorboard writers, errors."""
import argparse
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
from tensorboardX import SummaryWriter

from CPCTrans.augment import RESIZE_KINDS
from CPCTrans.checkpoint import save_atomic
from CPCTrans.convgru import GRU_DROPOUT
from CPCTrans.data import SOURCES
from CPCTrans.device import select_device
from CPCTrans.distributed import Processes, from_environment

REPO_ROOT = Path(__file__).resolve().parents[1]


def csv_root(args) -> Path:
    """--csv_root, by default ProcessData/data/<dataset>."""
    return Path(args.csv_root) if args.csv_root else REPO_ROOT / "ProcessData" / "data" / args.dataset


def split_csv(args, stage: str) -> Path:
    """The CSV of `stage` ('train' or 'test') of --split."""
    return csv_root(args) / f"{stage}_split{args.split:02d}.csv"


def run_folder(args, name: str) -> Path:
    """Where run `name` keeps its logs (img/) and checkpoints (model/)."""
    return Path(args.log_root) / f"log_{args.prefix}" / name


class NoWriter:
    """Stands in for a tensorboard writer in the processes that do not write (all but rank 0)."""

    def add_scalar(self, *args, **kwargs) -> None:
        pass

    def add_image(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


@contextmanager
def stage_writers(run_dir: Path, writes: bool = True):
    """Tensorboard writers for img/train and img/val, flushed and closed however the run ends (a stop, an error);
    stand-ins that write nothing unless `writes`."""
    writers = {stage: SummaryWriter(str(run_dir / "img" / stage)) if writes else NoWriter()
               for stage in ("train", "val")}
    try:
        yield writers
    finally:
        for writer in writers.values():
            writer.close()


def save_epoch(state: dict, model_dir: Path, epoch: int, is_best: bool, write_epoch: bool = True) -> Path | None:
    """Writes epochN.pth.tar when `write_epoch` and model_best_epochN.pth.tar when `is_best`; the files they
    replace, and the checkpoints of interrupted epochs, go only after the new ones are complete.
    Returns epochN's path, or None when it was not written."""
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / f"epoch{epoch}.pth.tar" if write_epoch else None
    best_name = f"model_best_epoch{epoch}.pth.tar"
    if path is not None:
        save_atomic(state, path)
    if is_best:
        save_atomic(state, model_dir / best_name)
    for old in model_dir.glob("*epoch*.pth.tar"):
        stale_epoch = path is not None and old.name.startswith(("epoch", "interrupted")) and old != path
        stale_best = is_best and old.name.startswith("model_best_epoch") and old.name != best_name
        if stale_epoch or stale_best:
            old.unlink()
    return path


def saved_as(path: Path | None) -> str:
    """How an epoch's console line names its checkpoint."""
    return path.name if path is not None else "not saved (--save_freq)"


def _due(freq: int, epoch: int, epochs: int) -> bool:
    return (epoch + 1) % freq == 0 or epoch + 1 == epochs


def should_validate(args, epoch: int) -> bool:
    """Whether 0-based `epoch` ends with a validation (--val_freq); the last epoch always does."""
    return _due(args.val_freq, epoch, args.epochs)


def should_save(args, epoch: int, stopping: bool) -> bool:
    """Whether 0-based `epoch` ends with an epoch checkpoint (--save_freq): every N epochs, after the last one,
    and when the run is being stopped, so that a stop never loses a finished epoch."""
    return stopping or _due(args.save_freq, epoch, args.epochs)


def best_after(val: dict, best_acc: float) -> tuple[bool, float]:
    """(is this epoch the best so far, best top-1) after an epoch whose validation is `val` (empty when skipped)."""
    if not val:
        return False, best_acc
    return val["top1"] >= best_acc, max(best_acc, val["top1"])


def user_error(error: Exception) -> str:
    """One line for an error a user caused; errors raised in a loader worker arrive wrapped in a traceback."""
    last_line = str(error).strip().splitlines()[-1]
    if "Original Traceback" in str(error):
        return last_line.split(": ", 1)[-1]
    return last_line


def at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_schedule_flags(parser, weight_decay: float) -> None:
    """Flags of every training CLI for the network, the optimiser and the schedule (the reference's names and
    defaults), and for continuing a run."""
    parser.add_argument("--net", default="resnet18", choices=["resnet18"])
    parser.add_argument("--batch_size", default=16, type=int)
    parser.add_argument("--lr", default=1e-3, type=float)
    parser.add_argument("--wd", default=weight_decay, type=float, help="weight decay")
    parser.add_argument("--epochs", default=300, type=int)
    parser.add_argument("--start_epoch", default=0, type=int, help="the first epoch's number (--resume sets it)")
    parser.add_argument("--print_freq", default=5, type=int, help="steps between progress updates")
    parser.add_argument("--resume", default="", help="checkpoint of this run to continue, or 'latest' (its newest)")
    parser.add_argument("--reset_lr", action="store_true", help="on resume, start a fresh optimiser at --lr")
    parser.add_argument("--prefix", default="tmp", help="logs go to <log_root>/log_<prefix>/")


def add_run_flags(parser, log_root: Path) -> None:
    """Flags of every training CLI for where data and logs are, the seed and tolerance of unreadable clips."""
    parser.add_argument("--csv_root", default=None, help="default: ProcessData/data/<dataset>")
    parser.add_argument("--log_root", default=str(log_root), help="logs go to <log_root>/log_<prefix>/")
    parser.add_argument("--seed", default=0, type=int)
    parser.add_argument("--max_bad_samples", default=10, type=int,
                        help="unreadable training clips replaced and logged before the run stops")
    parser.add_argument("--val_freq", default=1, type=at_least_one,
                        help="validate every N epochs and after the last; training is the same whatever N is")
    parser.add_argument("--save_freq", default=1, type=at_least_one,
                        help="write the epoch checkpoint every N epochs, after the last and when stopped (an epoch "
                             "validated best is always kept as model_best); a run killed outright resumes from the "
                             "last one written")


def add_resize_flag(parser, default: str | None) -> None:
    parser.add_argument("--resize", default=default, choices=RESIZE_KINDS,
                        help="nearest (the reference): each crop becomes 224x224, then --img_dim by nearest neighbour; "
                             "bilinear: the crop scaled to --img_dim in one antialiased step")


def add_source_flags(parser, source: str | None, short_side: int | None) -> None:
    parser.add_argument("--source", default=source, choices=SOURCES,
                        help="what the CSV index names: frame folders of extract_frame.py (frames), or video files "
                             "decoded clip by clip in the loader workers (video; index them with write_csv.py "
                             "--video_root)")
    parser.add_argument("--short_side", default=short_side, type=at_least_one,
                        help="--source video: frames are resized to this short side in the workers, as "
                             "extract_frame.py writes them (240)")


def add_gru_dropout_flag(parser) -> None:
    parser.add_argument("--gru_dropout", default=GRU_DROPOUT, type=float,
                        help="dropout on the ConvGRU's hidden state after every step (the reference's 0.1)")


def fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's


def add_compile_flag(parser) -> None:
    parser.add_argument("--compile", nargs="?", const="default", default=None, choices=COMPILE_MODES, metavar="MODE",
                        help="torch.compile the model and the training augmentation's color operations; MODE "
                             "reduce-overhead also replays each model step as a CUDA graph, which removes the "
                             "per-kernel launch cost that bounds small batches (choices: "
                             + ", ".join(COMPILE_MODES) + "; --compile alone: default)")


def add_speed_flags(parser) -> None:
    """Flags of every training and testing CLI that choose where and how fast the work runs."""
    parser.add_argument("--workers", default=4, type=int, help="data loader processes")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--gpu", default="0", help="CUDA device index")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="bf16 autocast (default: on for CUDA)")
    parser.add_argument("--decode", default="cpu", choices=["cpu", "gpu"],
                        help="where JPEGs are decoded: in the loader workers (cpu) or batched with nvJPEG (gpu; "
                             "its pixels differ from libjpeg's, docs/speed.md)")
    add_compile_flag(parser)
    parser.add_argument("--prefetch", default=None, type=int,
                        help="batches copied and augmented ahead in a background thread (default: 2 on CUDA, "
                             "0 on the CPU, where the step and the thread would share the same cores)")



MIN_IMG_DIM = 32  # the trunk downsamples by 32: anything smaller has no feature map left to predict


def check_img_dim(parser: argparse.ArgumentParser, img_dim: int | None) -> None:
    if img_dim is not None and img_dim < MIN_IMG_DIM:
        parser.error(f"--img_dim {img_dim} is too small: the network needs at least {MIN_IMG_DIM}")


def resolve_speed_flags(args) -> torch.device:
    """Fills --amp and --prefetch for the chosen device and checks --decode; returns the device."""
    device = select_device(args.device, args.gpu)
    if args.amp is None:
        args.amp = device.type == "cuda"
    if args.prefetch is None:
        args.prefetch = 2 if device.type == "cuda" else 0
    if args.decode == "gpu" and device.type != "cuda":
        raise SystemExit("--decode gpu needs a CUDA device; use --decode cpu")
    return device


def speed_summary(args) -> str:
    """The speed flags a run resolved to, for its first line."""
    return f"amp={args.amp}, decode={args.decode}, compile={args.compile or 'off'}"


def adam(params, device: torch.device, lr: float, weight_decay: float) -> torch.optim.Adam:
    """Adam with multi-tensor kernels: fused on CUDA; on the CPU foreach, which gives the same bits as the per-tensor
    loop torch picks by default for CPU tensors, with far fewer ops (much faster when the cores are busy)."""
    kernels = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **kernels)


def prepare_model(model: torch.nn.Module, device: torch.device, compile_mode: str | None,
                  processes: Processes = Processes(), sync_bn: bool = False) -> torch.nn.Module:
    """Moves `model` to `device` (channels_last on CUDA); returns the module to call: with several processes
    wrapped in DistributedDataParallel (its BatchNorms synchronised across them when `sync_bn`), compiled in
    `compile_mode` (one of COMPILE_MODES) unless that is None.

    Keep the bare `model` for state_dict() and train_mode(): the wrappers prefix every name.
    """
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    model.to(device)
    step_model = model
    if processes.distributed:
        if sync_bn:
            torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        step_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(step_model, mode=compile_mode) if compile_mode else step_model


def start_processes(args) -> tuple[torch.device, Processes]:
    """Joins the processes torchrun started, if any (each on the GPU of its local rank), and resolves the speed
    flags for this process's device."""
    wants_cuda = args.device != "cpu" and torch.cuda.is_available()
    processes = from_environment("cuda" if wants_cuda else "cpu")
    if processes.distributed:
        args.gpu = str(processes.local_rank)
        if not processes.is_main:  # rank 0 speaks for the run; errors still reach every rank's stderr
            sys.stdout = open(os.devnull, "w")
    device = resolve_speed_flags(args)
    if getattr(args, "sync_bn", False) and device.type != "cuda":
        raise SystemExit("--sync_bn synchronises BatchNorm across GPUs; it needs CUDA (drop it on the CPU)")
    return device, processes


def add_distributed_flags(parser) -> None:
    """Flags of the training CLIs that matter only under torchrun (several processes)."""
    parser.add_argument("--sync_bn", action="store_true",
                        help="under torchrun, BatchNorm statistics over the global batch (SyncBatchNorm; CUDA only); "
                             "off, as the reference's DataParallel, each process normalises its own share")
