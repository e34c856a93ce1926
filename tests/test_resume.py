"""Never lose a run: exact resume after an epoch or after SIGTERM mid-epoch, and a NaN loss stops cleanly.

The runs that are stopped by a signal are real processes; the others call the same CLI entry points in this
process (the command line itself is tested end to end in test_pipeline.py).
"""
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from CPCTrans import main as pretraining
from Evaluate import test as evaluation

REPO = Path(__file__).resolve().parents[1]
ENTRY_POINTS = {"CPCTrans/main.py": pretraining.main, "Evaluate/test.py": evaluation.main}


def run_flags(demo_dataset, log_root, epochs, *extra):
    flags = ["--img_dim", "64", "--batch_size", "4", "--workers", "0", "--device", "cpu", "--dataset", "demo",
             "--csv_root", demo_dataset / "csv", "--log_root", log_root, "--epochs", epochs, *extra]
    return list(map(str, flags))


def pretrain_command(demo_dataset, log_root, epochs, *extra, script="CPCTrans/main.py"):
    return [sys.executable, str(REPO / script), *run_flags(demo_dataset, log_root, epochs, *extra)]


def pretrain(demo_dataset, log_root, epochs, *extra, script="CPCTrans/main.py"):
    """Runs `script`'s entry point in this process; a refusal raises SystemExit with its one line."""
    ENTRY_POINTS[script](run_flags(demo_dataset, log_root, epochs, *extra))


def refusal(demo_dataset, log_root, epochs, *extra) -> str:
    """The one line a pretraining run that must be refused exits with."""
    with pytest.raises(SystemExit) as refused:
        pretrain(demo_dataset, log_root, epochs, *extra)
    message = refused.value.code
    assert isinstance(message, str) and message.startswith("error: ") and "\n" not in message
    return message


def final_weights(log_root, epochs):
    path = next(Path(log_root).glob(f"log_tmp/*/model/epoch{epochs}.pth.tar"))
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def uninterrupted(demo_dataset, tmp_path_factory):
    """Final weights of a straight run of `epochs` epochs of `script`, computed once per module."""
    runs = {}

    def weights(epochs, script="CPCTrans/main.py"):
        if (epochs, script) not in runs:
            root = tmp_path_factory.mktemp("straight")
            pretrain(demo_dataset, root, epochs, script=script)
            runs[epochs, script] = final_weights(root, epochs)
        return runs[epochs, script]
    return weights


def assert_same_weights(first, second):
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


def test_resumed_run_ends_with_the_uninterrupted_weights(demo_dataset, tmp_path, uninterrupted, capsys):
    pretrain(demo_dataset, tmp_path / "resumed", 1)
    capsys.readouterr()
    pretrain(demo_dataset, tmp_path / "resumed", 2, "--resume", "latest")
    assert "at epoch 1" in capsys.readouterr().out
    assert_same_weights(uninterrupted(2), final_weights(tmp_path / "resumed", 2))


# With --prefetch 2 a thread augments batches ahead of the step; the stop must still save the state of the
# last batch trained on, and the result equal the straight run without prefetching.
@pytest.mark.parametrize("script, extra", [("CPCTrans/main.py", []), ("Evaluate/test.py", []),
                                           ("CPCTrans/main.py", ["--prefetch", "2"])])
def test_sigterm_stops_with_a_checkpoint_and_resume_latest_finishes_exactly(demo_dataset, tmp_path, script, extra,
                                                                            uninterrupted):
    stopped = tmp_path / "stopped"
    process = subprocess.Popen(pretrain_command(demo_dataset, stopped, 3, *extra, script=script),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(stopped.glob("log_tmp/*/model/epoch1.pth.tar")) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert "stopped by SIGTERM" in out and "--resume" in out
    if list(stopped.glob("log_tmp/*/model/epoch3.pth.tar")):
        raise AssertionError("the run finished before the signal arrived; nothing was tested")
    pretrain(demo_dataset, stopped, 3, "--resume", "latest", *extra, script=script)
    assert_same_weights(uninterrupted(3, script), final_weights(stopped, 3))


# Every training epoch reseeds all it draws from, so validating (--val_freq) or saving (--save_freq) fewer
# epochs must change no weight.
@pytest.mark.parametrize("script", ["CPCTrans/main.py", "Evaluate/test.py"])
def test_validating_and_saving_every_second_epoch_trains_exactly_the_same(demo_dataset, tmp_path, script,
                                                                           uninterrupted, capsys):
    pretrain(demo_dataset, tmp_path, 3, "--val_freq", "2", "--save_freq", "2", script=script)
    epoch_lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert ["val loss" in line for line in epoch_lines] == [False, True, True]
    assert [line.split("-> ")[-1] for line in epoch_lines] == ["not saved (--save_freq)", "epoch2.pth.tar",
                                                               "epoch3.pth.tar"]
    assert_same_weights(uninterrupted(3, script), final_weights(tmp_path, 3))


@pytest.mark.parametrize("delay", [0.0, 0.7])
def test_sigkill_at_any_moment_then_resume_latest_ends_with_the_same_weights(demo_dataset, tmp_path, delay,
                                                                            uninterrupted):
    killed = tmp_path / "killed"
    process = subprocess.Popen(pretrain_command(demo_dataset, killed, 3), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(killed.glob("log_tmp/*/model/epoch1.pth.tar")) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(delay)
    process.kill()
    process.wait(timeout=60)
    if list(killed.glob("log_tmp/*/model/epoch3.pth.tar")):
        raise AssertionError("the run finished before it was killed; nothing was tested")
    pretrain(demo_dataset, killed, 3, "--resume", "latest")
    assert_same_weights(uninterrupted(3), final_weights(killed, 3))


def test_a_fresh_run_in_a_folder_holding_checkpoints_is_refused_and_changes_nothing(demo_dataset, tmp_path):
    pretrain(demo_dataset, tmp_path, 1)
    model_dir = next(tmp_path.glob("log_tmp/*/model"))
    before = {path.name: path.read_bytes() for path in model_dir.iterdir()}
    message = refusal(demo_dataset, tmp_path, 2)
    assert "--resume latest" in message and str(model_dir) in message
    assert {path.name: path.read_bytes() for path in model_dir.iterdir()} == before


def test_nan_loss_stops_with_one_line_and_keeps_the_last_checkpoint(demo_dataset, tmp_path):
    pretrain(demo_dataset, tmp_path, 1)
    good = next(tmp_path.glob("log_tmp/*/model/epoch1.pth.tar"))
    before = good.read_bytes()
    assert "the loss is nan" in refusal(demo_dataset, tmp_path, 3, "--resume", good, "--reset_lr", "--lr", "1e30")
    assert good.read_bytes() == before
    assert not list(tmp_path.glob("log_tmp/*/model/epoch[23].pth.tar"))


def dataset_with_a_broken_video(demo_dataset, root):
    """A copy of the demo CSVs whose first training video has only corrupt frames."""
    csv_root = root / "csv"
    shutil.copytree(demo_dataset / "csv", csv_root)
    rows = (csv_root / "train_split01.csv").read_text().splitlines()
    folder, frames, label = rows[0].split(",")
    broken = root / "broken" / Path(folder).name
    shutil.copytree(folder, broken)
    for image in broken.iterdir():
        image.write_bytes(b"\xff\xd8 truncated")
    rows[0] = f"{broken},{frames},{label}"
    (csv_root / "train_split01.csv").write_text("\n".join(rows) + "\n")
    return csv_root, broken


def test_unreadable_training_clips_are_replaced_then_stop_the_run_past_the_limit(demo_dataset, tmp_path, capsys):
    csv_root, broken = dataset_with_a_broken_video(demo_dataset, tmp_path)
    flags = ["--csv_root", csv_root, "--batch_size", "5"]
    pretrain(demo_dataset, tmp_path / "logs", 1, *flags)
    logged = capsys.readouterr()
    assert f"replaced an unreadable clip: {broken}" in logged.err + logged.out
    message = refusal(demo_dataset, tmp_path / "strict", 1, *flags, "--max_bad_samples", 0)
    assert "more than --max_bad_samples 0" in message and str(broken) in message


def test_too_small_img_dim_is_refused_in_one_line(capsys):
    with pytest.raises(SystemExit) as refused:
        pretraining.main(["--img_dim", "16"])
    assert refused.value.code == 2 and "--img_dim 16 is too small" in capsys.readouterr().err.strip().splitlines()[-1]
