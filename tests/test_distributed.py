"""Several processes under torchrun (gloo on the CPU, 2 processes): the step equals one process's on the global
batch, runs stop and resume together, a checkpoint written by two processes tests the same in one, and a process
that dies ends the others with one line."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from CPCTrans.main import pretext_loss
from distributed_step import CPU, fresh_model, global_batch
from Evaluate import test as evaluation
from test_resume import assert_same_weights, final_weights

REPO = Path(__file__).resolve().parents[1]
PROCESSES = 2
# Two processes x batch 2 = the global batch of 4; every test video is validated.
FLAGS = ["--img_dim", "64", "--batch_size", "2", "--workers", "0", "--device", "cpu", "--dataset", "demo",
         "--val_fraction", "1"]
# For runs a signal stops: batches of one clip make five steps an epoch, so that it lands inside one.
SMALL_STEPS = [*FLAGS, "--batch_size", "1"]


def torchrun(script, *flags, wait=True):
    """`torchrun --standalone --nproc_per_node 2 script flags`, one thread per process (two cores in all)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(PROCESSES),
               str(REPO / script), *map(str, flags)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    if not wait:
        return process
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    return out


def relative_error(ours: torch.Tensor, expected: torch.Tensor) -> float:
    return float((ours - expected).abs().max() / expected.abs().max().clamp_min(1e-12))


def test_one_step_on_two_processes_is_one_process_step(tmp_path):
    """global: each process scores its predictions against every process's targets, so the loss and gradients are
    one process's on the global batch. local: each scores against its own, the mean of two independent losses."""
    out = tmp_path / "step.pt"
    torchrun("tests/distributed_step.py", out)
    distributed = torch.load(out, weights_only=True)
    for negatives in ("global", "local"):
        model = fresh_model()
        if negatives == "global":
            loss = pretext_loss(model, global_batch(), CPU, False)[0]
        else:
            halves = global_batch().chunk(PROCESSES)
            loss = sum(pretext_loss(model, half, CPU, False)[0] for half in halves) / PROCESSES
        loss.backward()
        assert distributed[negatives]["loss"] == pytest.approx(loss.item(), rel=1e-5), negatives
        for name, param in model.named_parameters():
            assert relative_error(distributed[negatives]["gradients"][name], param.grad) < 1e-4, (negatives, name)


def rank_processes(launcher: subprocess.Popen) -> dict[int, int]:
    """{rank: pid} of the processes torchrun started."""
    children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
    ranks = {}
    for pid in children:
        environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        rank = next(entry for entry in environment if entry.startswith(b"RANK="))
        ranks[int(rank.split(b"=")[1])] = int(pid)
    return ranks


def signal_rank_after_first_epoch(launcher: subprocess.Popen, log_root: Path, rank: int, signal_number) -> float:
    deadline = time.monotonic() + 120
    while not list(log_root.glob("log_tmp/*/model/epoch1.pth.tar")) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(rank_processes(launcher)[rank], signal_number)
    return time.monotonic()


def test_sigterm_to_one_rank_stops_both_with_one_checkpoint_that_resumes_exactly(demo_dataset, tmp_path):
    data = ["--csv_root", demo_dataset / "csv"]
    straight = tmp_path / "straight"
    torchrun("CPCTrans/main.py", *SMALL_STEPS, *data, "--epochs", 2, "--log_root", straight)
    stopped = tmp_path / "stopped"
    launcher = torchrun("CPCTrans/main.py", *SMALL_STEPS, *data, "--epochs", 2, "--log_root", stopped, wait=False)
    signal_rank_after_first_epoch(launcher, stopped, 1, signal.SIGTERM)
    out, err = launcher.communicate(timeout=120)
    assert launcher.returncode == 0, err
    if list(stopped.glob("log_tmp/*/model/epoch2.pth.tar")):
        raise AssertionError("the run finished before the signal arrived; nothing was tested")
    assert out.count("stopped by SIGTERM (to rank 1)") == 1 and "--resume" in out
    assert len(list(stopped.glob("log_tmp/*/model/interrupted_*.pth.tar"))) == 1
    torchrun("CPCTrans/main.py", *SMALL_STEPS, *data, "--epochs", 2, "--log_root", stopped, "--resume", "latest")
    assert_same_weights(final_weights(straight, 2), final_weights(stopped, 2))


def test_a_checkpoint_of_two_processes_tests_and_retrieves_the_same_in_one(demo_dataset, tmp_path):
    data = ["--csv_root", demo_dataset / "csv"]
    torchrun("Evaluate/test.py", *FLAGS, *data, "--epochs", 1, "--log_root", tmp_path)
    checkpoint = next(tmp_path.glob("log_tmp/*/model/epoch1.pth.tar"))
    result = checkpoint.with_name(checkpoint.name + ".test.json")
    torchrun("Evaluate/test.py", *data, "--device", "cpu", "--workers", "0", "--test", checkpoint)
    two = json.loads(result.read_text())
    evaluation.main(list(map(str, [*data, "--device", "cpu", "--workers", "0", "--test", checkpoint])))
    one = json.loads(result.read_text())
    assert two["videos_tested"] == one["videos_tested"] > 0 and two["windows"] == one["windows"]
    assert (two["top1"], two["top5"]) == (one["top1"], one["top5"])
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)
    retrieved = checkpoint.with_name(checkpoint.name + ".retrieval.json")
    torchrun("Evaluate/test.py", *data, "--device", "cpu", "--workers", "0", "--retrieval", checkpoint)
    two = json.loads(retrieved.read_text())
    evaluation.main(list(map(str, [*data, "--device", "cpu", "--workers", "0", "--retrieval", checkpoint])))
    one = json.loads(retrieved.read_text())
    assert (two["train_videos"], two["test_videos"]) == (one["train_videos"], one["test_videos"])
    assert all(two[f"R@{k}"] == one[f"R@{k}"] for k in (1, 5, 10, 20))


def test_a_rank_that_dies_ends_the_other_with_one_line(demo_dataset, tmp_path):
    killed = tmp_path / "killed"
    launcher = torchrun("CPCTrans/main.py", *SMALL_STEPS, "--csv_root", demo_dataset / "csv", "--epochs", 3,
                        "--log_root", killed, wait=False)
    killed_at = signal_rank_after_first_epoch(launcher, killed, 1, signal.SIGKILL)
    _, err = launcher.communicate(timeout=120)
    assert launcher.returncode != 0 and time.monotonic() - killed_at < 60
    lines = [line for line in err.splitlines() if line.startswith("error: rank 0: ")]
    assert len(lines) == 1 and "another process of this run is gone" in lines[0], err
