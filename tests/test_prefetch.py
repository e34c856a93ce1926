"""Batches prepared ahead in a thread: the same batches as without, and an exact state when stopped early."""
import time

import cv2
import numpy as np
import pytest
import torch

from CPCTrans.augment import PRETRAIN, ClipAugment
from CPCTrans.data import ClipDataset, DataError, VideoRecord, make_loader
from CPCTrans.prefetch import DeviceBatches
from ProcessData.make_demo import CLASSES, camera_video

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("frames")
    rng = np.random.default_rng(0)
    records = []
    for index, motion in enumerate(list(CLASSES.values()) * 2):
        folder = root / f"video{index}"
        folder.mkdir()
        for number, frame in enumerate(camera_video(rng, motion, 12), 1):
            cv2.imwrite(str(folder / f"image_{number:05d}.jpg"), cv2.resize(frame, (80, 60)))
        records.append(VideoRecord(str(folder), 12, index % len(CLASSES)))
    return records


def batches_of(records, depth, workers=0, take=None, device=CPU):
    """The batches of one epoch (or its first `take`), and the augmentation generator's state afterwards.
    When stopping early with a thread, first waits until the thread has filled its queue (drawn ahead)."""
    loader = make_loader(ClipDataset(records, num_seq=4, ds=2), 3, workers, train=True, device=device, seed=5)
    loader.sampler.set_epoch(1)
    augmenter = ClipAugment(PRETRAIN, 32, seed=7)
    taken = []
    with DeviceBatches(loader, augmenter, device, depth, augmenter.generator) as batches:
        for batch in batches:
            taken.append(batch)
            if len(taken) == take:
                while depth and batches.ready.qsize() < depth:
                    time.sleep(0.01)
                break
    return taken, augmenter.generator.get_state()


@pytest.mark.parametrize("workers", [0, 1])
def test_prefetched_batches_equal_the_batches_prepared_on_demand(records, workers):
    direct, direct_state = batches_of(records, depth=0)
    ahead, ahead_state = batches_of(records, depth=2, workers=workers)
    assert len(direct) == len(ahead) == len(records) // 3
    for first, second in zip(direct, ahead):
        assert torch.equal(first.inputs, second.inputs) and torch.equal(first.labels, second.labels)
        assert torch.equal(first.videos, second.videos)
    assert torch.equal(direct_state, ahead_state)


def test_stopping_early_leaves_the_augmentation_state_of_the_last_batch_taken(records):
    _, direct_state = batches_of(records, depth=0, take=1)
    _, ahead_state = batches_of(records, depth=2, take=1)
    assert torch.equal(direct_state, ahead_state)


def test_a_loader_error_in_the_thread_reaches_the_caller_naming_the_file(records, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for number in range(1, 13):
        (broken / f"image_{number:05d}.jpg").write_bytes(b"not a jpeg")
    dataset = ClipDataset([*records[:3], VideoRecord(str(broken), 12, 0)], num_seq=4, ds=2, windows=True)
    loader = make_loader(dataset, 2, 0, train=False, device=CPU)
    with pytest.raises(DataError, match="broken/image_0000.\\.jpg: cannot decode"):
        with DeviceBatches(loader, ClipAugment(PRETRAIN, 32, seed=0), CPU, depth=2) as batches:
            for _ in batches:
                pass


@pytest.mark.cuda
def test_batches_prepared_on_a_side_cuda_stream_equal_the_batches_prepared_on_demand(records):
    gpu = torch.device("cuda")
    direct, _ = batches_of(records, depth=0, workers=1, device=gpu)
    ahead, _ = batches_of(records, depth=2, workers=1, device=gpu)
    assert ahead[0].inputs.device.type == "cuda"
    for first, second in zip(direct, ahead, strict=True):
        assert torch.equal(first.inputs, second.inputs) and torch.equal(first.labels, second.labels)
