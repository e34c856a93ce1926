"""Never lose a run: exact resume after an epoch or after SIGTERM mid-epoch, and a NaN loss stops cleanly."""
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def pretrain_command(demo_dataset, log_root, epochs, *extra):
    flags = ["--img_dim", "64", "--batch_size", "4", "--workers", "0", "--device", "cpu", "--dataset", "demo",
             "--csv_root", demo_dataset / "csv", "--log_root", log_root, "--epochs", epochs, *extra]
    return [sys.executable, str(REPO / "CPCTrans" / "main.py"), *map(str, flags)]


def pretrain(demo_dataset, log_root, epochs, *extra):
    result = subprocess.run(pretrain_command(demo_dataset, log_root, epochs, *extra), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result


def final_weights(log_root, epochs):
    path = next(Path(log_root).glob(f"log_tmp/*/model/epoch{epochs}.pth.tar"))
    return torch.load(path, weights_only=True)["state_dict"]


def assert_same_weights(first, second):
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


def test_resumed_run_ends_with_the_uninterrupted_weights(demo_dataset, tmp_path):
    pretrain(demo_dataset, tmp_path / "straight", 2)
    pretrain(demo_dataset, tmp_path / "resumed", 1)
    result = pretrain(demo_dataset, tmp_path / "resumed", 2, "--resume", "latest")
    assert "at epoch 1" in result.stdout
    assert_same_weights(final_weights(tmp_path / "straight", 2), final_weights(tmp_path / "resumed", 2))


def test_sigterm_stops_with_a_checkpoint_and_resume_latest_finishes_exactly(demo_dataset, tmp_path):
    pretrain(demo_dataset, tmp_path / "straight", 3)
    stopped = tmp_path / "stopped"
    process = subprocess.Popen(pretrain_command(demo_dataset, stopped, 3), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(stopped.glob("log_tmp/*/model/epoch1.pth.tar")) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert "stopped by SIGTERM" in out and "--resume" in out
    if list(stopped.glob("log_tmp/*/model/epoch3.pth.tar")):
        raise AssertionError("the run finished before the signal arrived; nothing was tested")
    pretrain(demo_dataset, stopped, 3, "--resume", "latest")
    assert_same_weights(final_weights(tmp_path / "straight", 3), final_weights(stopped, 3))


def test_nan_loss_stops_with_one_line_and_keeps_the_last_checkpoint(demo_dataset, tmp_path):
    pretrain(demo_dataset, tmp_path, 1)
    good = next(tmp_path.glob("log_tmp/*/model/epoch1.pth.tar"))
    before = good.read_bytes()
    result = subprocess.run(pretrain_command(demo_dataset, tmp_path, 3, "--resume", good, "--reset_lr",
                                             "--lr", "1e30"), capture_output=True, text=True)
    assert result.returncode != 0
    assert "the loss is nan" in result.stderr and "Traceback" not in result.stderr
    assert good.read_bytes() == before
    assert not list(tmp_path.glob("log_tmp/*/model/epoch[23].pth.tar"))
