"""Checkpoints: atomic writes, safe loading, loading by name with a report."""
import pickle

import numpy as np
import pytest
import torch

from CPCTrans.checkpoint import CheckpointError, load, load_matching, load_pretrained, save_atomic
from CPCTrans.cpc import FuturePredictor
from CPCTrans.runtime import save_epoch
from Evaluate.classifier import VideoClassifier


class WritesAFile:
    """Unpickling this would create a file: the kind of payload weights_only must refuse."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_saved_checkpoint_loads_with_weights_only(tmp_path):
    model = FuturePredictor()
    path = tmp_path / "epoch1.pth.tar"
    save_atomic({"kind": "cpc", "state_dict": model.state_dict(), "model_config": model.config, "epoch": 1}, path)
    state = torch.load(path, weights_only=True)
    assert state["epoch"] == 1 and state["kind"] == "cpc"
    assert not list(tmp_path.glob(".*.tmp"))


def test_pickle_payload_is_refused_and_never_run(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pth.tar"
    with open(path, "wb") as handle:
        pickle.dump({"kind": "cpc", "state_dict": {}, "payload": WritesAFile(str(target))}, handle)
    with pytest.raises(CheckpointError, match="refused"):
        load(path)
    assert not target.exists()


def test_wrong_kind_is_named(tmp_path):
    path = tmp_path / "pretrain.pth.tar"
    save_atomic({"kind": "cpc", "state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="expected a finetuned checkpoint"):
        load(path, "classifier")


def test_pretrained_weights_load_by_name_with_a_report():
    pretrained = FuturePredictor()
    classifier = VideoClassifier(num_classes=4)
    report = load_matching(classifier, pretrained.state_dict())
    assert torch.equal(classifier.encoder.backbone.conv1.weight, pretrained.encoder.backbone.conv1.weight)
    assert torch.equal(classifier.agg.gates.weight, pretrained.agg.gates.weight)
    assert set(report["unused"]) == {n for n in pretrained.state_dict() if n.startswith("predictor.")}
    assert "final_fc.1.weight" in report["not_in_checkpoint"]


def test_epoch_rotation_keeps_latest_and_best(tmp_path):
    state = {"kind": "cpc", "state_dict": {}}
    save_epoch(state, tmp_path, 1, is_best=True)
    save_epoch(state, tmp_path, 2, is_best=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch2.pth.tar", "model_best_epoch1.pth.tar"]
    save_epoch(state, tmp_path, 3, is_best=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch3.pth.tar", "model_best_epoch3.pth.tar"]
    # Epochs --save_freq skips: the last epoch checkpoint stays the one to resume from; a best one is still kept.
    assert save_epoch(state, tmp_path, 4, is_best=True, write_epoch=False) is None
    assert save_epoch(state, tmp_path, 5, is_best=False, write_epoch=False) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch3.pth.tar", "model_best_epoch4.pth.tar"]


def test_pretrain_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "other.pth.tar"
    other = torch.nn.Sequential(torch.nn.Linear(4, 4))
    save_atomic({"kind": "cpc", "state_dict": other.state_dict(), "model_config": {"net": "mlp"}}, path)
    with pytest.raises(CheckpointError, match="another architecture"):
        load_pretrained(VideoClassifier(num_classes=3), path)


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "epoch1.pth.tar"
    save_atomic({"kind": "cpc", "state_dict": {"w": torch.ones(2)}}, path)
    before = path.read_bytes()

    def disk_full(obj, handle):
        handle.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_atomic({"kind": "cpc", "state_dict": {"w": torch.zeros(2)}}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["epoch1.pth.tar"]


def test_numpy_scalars_load_and_other_numpy_objects_stay_refused(tmp_path):
    """The reference's checkpoints hold best_acc as a numpy scalar; loading allows exactly those."""
    state = {"kind": "cpc", "state_dict": {}, "model_config": {}, "best_acc": np.float64(0.25), "step": np.int64(3)}
    scalars = tmp_path / "scalars.pth.tar"
    torch.save(state, scalars)
    loaded = load(scalars)
    assert loaded["best_acc"] == 0.25 and loaded["step"] == 3
    array = tmp_path / "array.pth.tar"
    torch.save({**state, "history": np.array([0.1, 0.2])}, array)
    with pytest.raises(CheckpointError, match="refused"):
        load(array)
