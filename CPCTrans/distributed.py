"""Several processes, one per GPU, on one or several machines: PyTorch's own engine (torch.distributed and
DistributedDataParallel), started by `torchrun`. Without torchrun a run is one process and nothing here does
anything.

Every process (rank) trains on its share of each global batch; rank 0 alone writes logs and checkpoints. Small
control messages (stop requests, random states, metric sums) go through a gloo group on the CPU, so that agreeing
on them never waits for the GPU; a rank that dies makes the next such message fail instead of hang.
"""
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
from torch import distributed as dist

# How long a collective waits for a rank that does not answer before it fails.
TIMEOUT = timedelta(minutes=10)


# What gloo's and NCCL's errors say when another process is gone (they raise them as RuntimeErrors).
PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "timed out", "Timed out")


def lost_peer(error: BaseException) -> str | None:
    """What to say when a collective failed because another process of the run is gone; None for an error of any
    other kind."""
    if not dist.is_initialized() or not isinstance(error, RuntimeError):
        return None
    text = str(error)
    if not isinstance(error, dist.DistError) and not any(sign in text for sign in PEER_GONE):
        return None
    cause = next((sign for sign in PEER_GONE if sign in text), text.strip().splitlines()[0])
    return (f"another process of this run is gone ({cause}); every process stops; continue with --resume latest "
            f"(the last checkpoint written)")


@dataclass(frozen=True)
class Processes:
    """This process's place in the run: rank `rank` of `world_size`, GPU `local_rank` of its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    control: object = None  # the gloo process group for control messages (None in a single process)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is True on any."""
        if not self.distributed:
            return flag
        value = torch.tensor([int(flag)])
        self._all_reduce(value, dist.ReduceOp.MAX)
        return bool(value.item())

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """The elementwise sum of `values` over the ranks (a copy, on the CPU; every rank gets it)."""
        total = values.detach().double().cpu().clone()
        if self.distributed:
            self._all_reduce(total, dist.ReduceOp.SUM)
        return total.to(values.dtype)

    def gather(self, value) -> list:
        """Every rank's `value` (a picklable object), in rank order, on every rank."""
        if not self.distributed:
            return [value]
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, value, group=self.control)
        return gathered

    def _all_reduce(self, tensor: torch.Tensor, op) -> None:
        dist.all_reduce(tensor, op, group=self.control)


def from_environment(device_type: str) -> Processes:
    """Joins the run torchrun started (its RANK, WORLD_SIZE, LOCAL_RANK and rendezvous in the environment): NCCL
    on CUDA, gloo on the CPU. A single process when WORLD_SIZE is absent or 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Processes()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend, timeout=TIMEOUT)
    control = dist.new_group(backend="gloo", timeout=TIMEOUT)
    return Processes(rank, world_size, local_rank, control)


def where() -> str:
    """How an error names the process it happened in: "rank N: " under torchrun, nothing otherwise."""
    return f"rank {dist.get_rank()}: " if dist.is_initialized() else ""


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class _GatherWithGrad(torch.autograd.Function):
    """Every rank's tensor, concatenated along the first dimension in rank order; the gradient of each part goes
    back, summed over the ranks that used it, to the rank it came from (all-reduce, then that rank's slice)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.rows = dist.get_rank(), tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """(n, ...) on each of K ranks -> (K * n, ...), rank r's rows at r * n, differentiable."""
    return _GatherWithGrad.apply(tensor)
