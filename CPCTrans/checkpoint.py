"""Checkpoints: plain dicts of tensors and Python values, written atomically, read with weights_only=True."""
import os
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import nn

from CPCTrans.reference_checkpoint import ReferenceFormatError, from_reference, is_reference_checkpoint

# The reference's checkpoints may hold numpy scalars (best_acc). weights_only loading allows the function numpy
# pickles them with, under numpy 2's and numpy 1's names, and the dtypes of float and integer scalars; nothing else
# of numpy.
NUMPY_SCALAR = np.float64(0).__reduce__()[0]
NUMPY_SCALARS = [np.dtype, (NUMPY_SCALAR, "numpy._core.multiarray.scalar"),
                 (NUMPY_SCALAR, "numpy.core.multiarray.scalar"),
                 *(type(np.dtype(kind)) for kind in (np.float16, np.float32, np.float64, np.int32, np.int64))]


class CheckpointError(Exception):
    """A checkpoint that cannot be used here; the message names the file and what to do."""


def save_atomic(state: dict, path: Path) -> None:
    """Writes `state` to a temporary file in the same folder, flushes it to disk, then renames it over `path`."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with open(temporary, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def load(path: str | Path, kind: str | None = None) -> dict:
    """Reads a checkpoint safely; `kind` ("cpc" or "classifier") is the model it must hold.

    A checkpoint of the reference implementation is converted to this repository's layout as it loads, and one
    line says so, naming the tensors it holds that nothing here uses."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with torch.serialization.safe_globals(NUMPY_SCALARS):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0]
        raise CheckpointError(f"{path}: refused, it is not a plain tensor checkpoint ({first_line})") from None
    except (RuntimeError, EOFError, OSError) as error:
        raise CheckpointError(f"{path}: unreadable or incomplete checkpoint ({error})") from None
    if is_reference_checkpoint(state):
        try:
            state = from_reference(state)
        except ReferenceFormatError as error:
            raise CheckpointError(f"{path}: a checkpoint of the reference implementation, but {error}") from None
        unused = state["converted_from_reference"]
        print(f"{path}: converted a {state['kind']} checkpoint of the reference implementation; not used "
              f"({len(unused)}): {', '.join(unused) or 'none'}")
    if not isinstance(state, dict) or "state_dict" not in state or "kind" not in state:
        raise CheckpointError(f"{path}: not a CPCTrans checkpoint (no 'state_dict' / 'kind')")
    if kind is not None and state["kind"] != kind:
        hint = {"cpc": "a pretraining checkpoint from CPCTrans/main.py",
                "classifier": "a finetuned checkpoint from Evaluate/test.py"}[kind]
        raise CheckpointError(f"{path}: holds a '{state['kind']}' model, expected {hint}")
    return state


def load_matching(model: nn.Module, state_dict: dict) -> dict[str, list[str]]:
    """Loads every tensor whose name and shape match; returns what was loaded, unused and left as initialised."""
    own = model.state_dict()
    loaded = [name for name, value in state_dict.items() if name in own and own[name].shape == value.shape]
    model.load_state_dict({name: state_dict[name] for name in loaded}, strict=False)
    return {
        "loaded": loaded,
        "shape_mismatch": [name for name in state_dict if name in own and name not in loaded],
        "unused": [name for name in state_dict if name not in own],
        "not_in_checkpoint": [name for name in own if name not in state_dict],
    }


def load_pretrained(model: nn.Module, path: str | Path, state: dict | None = None) -> str:
    """Initialises `model` from the matching tensors of a checkpoint; returns the report to print.

    A checkpoint sharing no tensor with `model` is another architecture: refused rather than ignored.
    """
    state = state if state is not None else load(path)
    report = load_matching(model, state["state_dict"])
    if not report["loaded"]:
        raise CheckpointError(f"{path}: no tensor matches this model by name and shape; it holds another "
                              f"architecture ({state.get('model_config')})")
    return describe_load(report, str(path))


def describe_load(report: dict[str, list[str]], source: str) -> str:
    lines = [f"loaded {len(report['loaded'])} tensors from {source}"]
    for key, title in (("shape_mismatch", "shape differs, left as initialised"),
                       ("unused", "in the checkpoint but not in this model"),
                       ("not_in_checkpoint", "not in the checkpoint, left as initialised")):
        if report[key]:
            lines.append(f"  {title} ({len(report[key])}): " + ", ".join(report[key]))
    return "\n".join(lines)


def training_state(model: nn.Module, config: dict, optimizer, scheduler, args, epoch: int, step: int,
                   best_acc: float, rng: dict | None = None, val_metrics: dict | None = None) -> dict:
    """What a run needs to continue: `epoch` epochs complete, `step` steps into the next one, and
    with `rng` the random states to replay the rest of it exactly; `val_metrics`, the last epoch's
    validation (empty when it was not validated), says what the weights were worth."""
    return {"kind": model.kind, "model_config": config, "epoch": epoch, "step": step,
            "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "best_acc": best_acc, "args": plain(vars(args)), "rng": rng,
            "val_metrics": plain(val_metrics or {})}


def plain(value):
    """Converts flag values (paths and the like) to types weights_only loading accepts."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    return str(value)
