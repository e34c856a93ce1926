"""One pretraining step of a fixed global batch, this process's share of it, with global and with local negatives:
run by test_distributed.py under torchrun (the test computes the same steps in one process). Writes, for each, the
mean loss over the processes and the gradients DistributedDataParallel left (the same in every process) to OUT.

    torchrun --standalone --nproc_per_node 2 tests/distributed_step.py OUT
"""
import sys

import torch

from CPCTrans.cpc import FuturePredictor
from CPCTrans.distributed import from_environment, shutdown
from CPCTrans.main import pretext_loss
from CPCTrans.runtime import prepare_model

CPU = torch.device("cpu")


def global_batch() -> torch.Tensor:
    return torch.randn(4, 5, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def fresh_model() -> FuturePredictor:
    """Seeded weights; eval mode, so that the step is a function of the batch alone (BatchNorm on its running
    statistics, no dropout), whichever process computes which part of it."""
    torch.manual_seed(0)
    return FuturePredictor().eval()


def main(out: str) -> None:
    processes = from_environment("cpu")
    model = fresh_model()
    step_model = prepare_model(model, CPU, None, processes)
    share = global_batch().chunk(processes.world_size)[processes.rank]
    results = {}
    for negatives, every_process in (("global", processes), ("local", None)):
        model.zero_grad()
        loss = pretext_loss(step_model, share, CPU, False, every_process)[0]
        loss.backward()
        losses = processes.gather(loss.item())
        results[negatives] = {"loss": sum(losses) / len(losses),
                              "gradients": {name: param.grad.clone() for name, param in model.named_parameters()}}
    if processes.is_main:
        torch.save(results, out)
    shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
