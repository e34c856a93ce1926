"""What finetuning, testing and retrieval read: the data flags (from the command line, else the checkpoint, else
the defaults), the architecture a checkpoint was trained with, the clips of a split."""
import argparse

from CPCTrans.checkpoint import CheckpointError
from CPCTrans.cpc import plateau_warning
from CPCTrans.data import SHORT_SIDE, ClipDataset, read_class_names, split_dataset
from CPCTrans.runtime import csv_root, split_csv

# Finetuning defaults; --test takes what it is not given from the checkpoint.
DATA_DEFAULTS = {"dataset": "ucf101", "split": 1, "num_seq": 5, "ds": 3, "img_dim": 128, "resize": "nearest",
                 "source": "frames", "short_side": SHORT_SIDE}
# The reference validates finetuning on a fixed share of the test split: more of HMDB51's, which is smaller.
VAL_FRACTIONS = {"hmdb51": 0.4}
VAL_FRACTION = 0.3
# The reference's architecture; a checkpoint's model_config overrides it.
ARCHITECTURE_DEFAULTS = {"attn": "full", "pos_enc": "none"}


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
    if state["kind"] != "cpc" or not state["val_metrics"]:
        return
    warning = plateau_warning(state["val_metrics"], state["model_config"]["pred_step"], checkpoint,
                              state["args"]["color_aug"])
    if warning:
        print(warning)


def clip_dataset(stage: str, args, num_classes: int, windows: bool, fraction: float = 1.0) -> ClipDataset:
    """Training and validation replace unreadable clips; testing (windows) must read every one."""
    return split_dataset(split_csv(args, stage), num_classes, args.num_seq, args.ds, windows=windows,
                         encoded=args.decode == "gpu", replace_bad=not windows, fraction=fraction,
                         source=args.source, short_side=args.short_side)
