"""Where the work runs: choosing the device, bf16 autocast, and host-to-device copies that never wait for the GPU."""
from contextlib import nullcontext

import torch


def select_device(choice: str, gpu: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was given but no CUDA device is visible; use --device cpu or auto")
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(str(gpu).split(",")[0]))


def autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()


def to_device(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A host tensor (a batch, its labels; the augmentation's boxes, indices, factors) -> `device`, without
    waiting for the GPU. The loader's batches come pinned already on CUDA; pin_memory() leaves them as they are.

    non_blocking alone does not do it: a copy from pageable memory holds the host until its stream has run
    everything queued before it (CUDA's API synchronisation rules), a wait torch's sync debug mode does not
    report. Copied from pinned memory, it is queued like a kernel.
    """
    tensor = tensor if dtype is None else tensor.to(dtype)
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
