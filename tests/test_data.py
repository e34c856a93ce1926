"""Clip sampling, the CSV index and the loader's uint8 clips (docs/method.md)."""
import cv2
import numpy as np
import pytest
import torch

from CPCTrans.data import (BadSamples, ClipDataset, DataError, EpochSampler, ReusedSharedBatches, VideoRecord,
                           clip_indices, clip_start_range, collate_clips, make_loader, read_class_names, read_index,
                           sample_videos, window_starts)


def write_frames(folder, count, height=24, width=32):
    folder.mkdir(parents=True)
    for index in range(1, count + 1):
        image = np.full((height, width, 3), index, dtype=np.uint8)
        cv2.imwrite(str(folder / f"image_{index:05d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 100])
    return str(folder)


def test_clip_frames_are_ds_apart_and_stay_in_the_video():
    assert clip_indices(4, num_seq=5, ds=3) == [4, 7, 10, 13, 16]
    assert clip_start_range(15, num_seq=5, ds=3) == 1
    assert clip_start_range(14, num_seq=5, ds=3) == 0
    assert clip_start_range(40, num_seq=5, ds=3) == 26


def test_random_starts_cover_the_whole_range(tmp_path):
    folder = write_frames(tmp_path / "v", 20)
    dataset = ClipDataset([VideoRecord(folder, 20, 0)], num_seq=3, ds=2)
    torch.manual_seed(0)
    firsts = set()
    for _ in range(200):
        clip, _, _, _ = dataset[0]
        values = clip[:, 0, 0, 0].int().tolist()
        firsts.add(values[0])
        assert [b - a for a, b in zip(values, values[1:])] == pytest.approx([2, 2], abs=2)
    # Frame k (1-based) is painted with value k; starts 0..14 are frames 1..15.
    assert min(firsts) <= 2 and max(firsts) >= 14


def test_short_videos_are_skipped_and_counted(tmp_path):
    records = [VideoRecord(write_frames(tmp_path / "long", 15), 15, 0),
               VideoRecord(write_frames(tmp_path / "short", 14), 14, 1)]
    dataset = ClipDataset(records, num_seq=5, ds=3)
    assert len(dataset) == 1 and dataset.num_skipped == 1
    windows = ClipDataset(records, num_seq=5, ds=3, windows=True)
    assert windows.num_skipped == 1


def test_test_windows_cut_the_strided_video_into_consecutive_windows():
    # 40 frames at stride 3: frames 0,3,...,39 (14 frames) -> two windows of 5, the rest dropped.
    assert window_starts(40, num_seq=5, ds=3) == [0, 15]
    assert window_starts(15, num_seq=5, ds=3) == [0]


def test_window_items_decode_the_right_frames(tmp_path):
    folder = write_frames(tmp_path / "v", 40)
    dataset = ClipDataset([VideoRecord(folder, 40, 3)], num_seq=5, ds=3, windows=True)
    assert len(dataset) == 2
    clip, label, video, problems = dataset[1]
    assert clip.dtype == torch.uint8 and clip.shape == (5, 3, 24, 32)
    assert label == 3 and video == 0 and problems == ()
    assert clip[:, 1, 5, 5].int().tolist() == pytest.approx([16, 19, 22, 25, 28], abs=2)


def test_loader_batches_stay_stored_channel_last_as_decoded(tmp_path):
    """JPEG decoders give frames channel-last; kept so, every copy on the way to the GPU is a plain one
    (stacking them channel-first is a transposing copy, ten times slower on a loader worker)."""
    folder = write_frames(tmp_path / "v", 40)
    dataset = ClipDataset([VideoRecord(folder, 40, 0)] * 2, num_seq=5, ds=3, windows=True)
    clips, sizes, _, videos, _ = next(iter(make_loader(dataset, 4, workers=1, train=False,
                                                       device=torch.device("cpu"))))
    assert clips.shape == (4, 5, 3, 24, 32) and clips.movedim(2, -1).is_contiguous()
    assert sizes.tolist() == [[24, 32]] * 4 and videos.tolist() == [0, 0, 1, 1]
    painted = [[1, 4, 7, 10, 13], [16, 19, 22, 25, 28]] * 2
    assert clips[:, :, 1, 5, 5].int().tolist() == [pytest.approx(row, abs=2) for row in painted]


def test_collate_pads_frames_of_different_sizes_and_reports_sizes():
    small = torch.full((2, 3, 4, 6), 7, dtype=torch.uint8)
    large = torch.full((2, 3, 5, 8), 9, dtype=torch.uint8)
    clips, sizes, labels, videos, problems = collate_clips([(small, 0, 0, ()), (large, 1, 1, ("bad",))])
    assert clips.shape == (2, 2, 3, 5, 8)
    assert sizes.tolist() == [[4, 6], [5, 8]]
    assert clips[0, :, :, :4, :6].eq(7).all() and clips[0, :, :, 4:].eq(0).all() and clips[0, ..., 6:].eq(0).all()
    assert clips[1].eq(9).all() and clips.movedim(2, -1).is_contiguous()
    assert labels.tolist() == [0, 1] and problems == ["bad"]


def collated_in_shared_memory(batch) -> bool:
    return collate_clips(batch)[0].is_shared()


def two_frame_sizes(tmp_path, windows=True):
    """Clips of two videos whose frames (painted 1, 2, ...) differ in size: 24x32 and 30x40."""
    return ClipDataset([VideoRecord(write_frames(tmp_path / "small", 30), 30, 0),
                        VideoRecord(write_frames(tmp_path / "large", 30, height=30, width=40), 30, 1)],
                       num_seq=5, ds=3, windows=windows)


def assert_same_batches(first, second):
    for one, other in zip(first, second, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(one[:4], other[:4])) and one[4] == other[4]


def test_reused_shared_batches_take_turns_and_equal_fresh_batches(tmp_path):
    """A worker writes its batches into `buffers` shared-memory batches in turn; the pixels an earlier batch left
    in a reused one never show through a later batch's padding."""
    dataset = two_frame_sizes(tmp_path)
    small, large = [dataset[i] for i in (0, 2)]
    # Large frames everywhere first, so that small clips are later padded inside memory that held large ones.
    batches = [[large, large], [large, large], [small, large], [large, small], [small, small], [small, large]]
    collate = ReusedSharedBatches(buffers=2)
    kept = []  # so that no batch's memory is freed and its address taken again
    for batch in batches:
        reused = collate(batch)
        assert reused[0].is_shared() and reused[0].movedim(2, -1).is_contiguous()
        assert_same_batches([reused], [collate_clips(batch)])
        kept.append(reused[0])
    addresses = [clips.data_ptr() for clips in kept]
    assert addresses[:4] == addresses[:2] * 2
    assert len(set(addresses)) == 3  # the small-only batch takes a smaller one in its turn


def test_a_loader_with_reused_shared_batches_gives_the_batches_of_fresh_ones(tmp_path):
    """Two workers, each reusing its batches many times over; the batches are copied as they arrive, as pinning
    them does on CUDA (make_loader reuses batches only there)."""
    dataset = two_frame_sizes(tmp_path, windows=False)
    dataset.items = dataset.items * 40  # 80 clips from random starts: 40 batches, 20 per worker (6 buffers each)

    def loader(**options):
        return torch.utils.data.DataLoader(dataset, batch_size=2, sampler=EpochSampler(len(dataset), True, 3),
                                           **options)
    fresh = list(loader(collate_fn=collate_clips))
    copied = [(batch[0].clone(), *batch[1:])
              for batch in loader(num_workers=2, prefetch_factor=4, collate_fn=ReusedSharedBatches(buffers=6))]
    assert_same_batches(fresh, copied)
    assert len({clips.sum().item() for clips, *_ in fresh}) > 20  # starts and frame sizes differ batch to batch
    # Only where batches are pinned (copied) as they arrive: CUDA.
    assert make_loader(dataset, 2, 2, train=True, device=torch.device("cpu")).collate_fn is collate_clips


@pytest.mark.cuda
def test_a_pinned_loader_reuses_its_shared_batches_and_gives_the_cpu_loaders_batches(tmp_path):
    dataset = two_frame_sizes(tmp_path, windows=False)
    dataset.items = dataset.items * 40

    def two_epochs(device):
        loader = make_loader(dataset, 2, workers=2, train=True, device=torch.device(device), seed=3)
        assert isinstance(loader.collate_fn, ReusedSharedBatches) == (device == "cuda")
        batches = []
        for epoch in range(2):
            loader.sampler.set_epoch(epoch)
            for batch in loader:
                assert batch[0].is_pinned() == (device == "cuda")
                batches.append((batch[0].clone(), *batch[1:]))
        return batches
    assert_same_batches(two_epochs("cpu"), two_epochs("cuda"))


def test_a_worker_builds_its_batch_in_shared_memory(tmp_path):
    """The main process reads a worker's batch from shared memory; built anywhere else, it is copied there once
    more on every batch."""
    folder = write_frames(tmp_path / "v", 40)
    dataset = ClipDataset([VideoRecord(folder, 40, 0)] * 2, num_seq=5, ds=3, windows=True)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=1, collate_fn=collated_in_shared_memory)
    assert next(iter(loader)) is True


def test_csv_index_reads_rows_and_names_bad_ones(tmp_path):
    good = tmp_path / "train_split01.csv"
    good.write_text("frames/a (1)&b,40,0\nframes/c,12,2\n")
    assert [r.num_frames for r in read_index(good, num_classes=3)] == [40, 12]
    assert read_index(good)[0].folder == "frames/a (1)&b"
    bad = tmp_path / "bad.csv"
    bad.write_text("frames/a,40,0\nframes/b,forty,1\n")
    with pytest.raises(DataError, match=r"bad.csv:2"):
        read_index(bad)
    with pytest.raises(DataError, match="outside 0..1"):
        read_index(good, num_classes=2)
    with pytest.raises(DataError, match="not found"):
        read_index(tmp_path / "missing.csv")


def test_class_list_is_one_based_and_ordered(tmp_path):
    path = tmp_path / "classInd.txt"
    path.write_bytes(b"2 Beta\r\n1 Alpha\r\n")
    assert read_class_names(path) == ["Alpha", "Beta"]


def test_unreadable_frame_names_the_file(tmp_path):
    folder = write_frames(tmp_path / "v", 6)
    (tmp_path / "v" / "image_00003.jpg").write_bytes(b"not a jpeg")
    dataset = ClipDataset([VideoRecord(folder, 6, 0)], num_seq=3, ds=2, windows=True)
    with pytest.raises(DataError, match="image_00003.jpg: cannot decode"):
        dataset[0]


def test_unreadable_clip_is_replaced_and_reported_when_asked(tmp_path):
    broken = write_frames(tmp_path / "broken", 6)
    (tmp_path / "broken" / "image_00003.jpg").unlink()
    good = write_frames(tmp_path / "good", 6)
    records = [VideoRecord(broken, 6, 0), VideoRecord(good, 6, 1)]
    dataset = ClipDataset(records, num_seq=3, ds=2, replace_bad=True)
    clip, label, video, problems = dataset[(0, 0.0)]
    assert label == 1 and video == 1
    assert problems == (f"{broken}/image_00003.jpg: frame missing or unreadable; "
                        f"re-run ProcessData/extract_frame.py for that video",)
    nothing_good = ClipDataset([VideoRecord(broken, 6, 0)], num_seq=3, ds=2, replace_bad=True)
    with pytest.raises(DataError, match="in a row cannot be read"):
        nothing_good[(0, 0.0)]


def test_bad_samples_past_the_limit_stop_with_the_list():
    bad = BadSamples(limit=1)
    bad.add(["a.jpg: broken"])
    with pytest.raises(DataError, match=r"2 unreadable clips, more than --max_bad_samples 1: a.jpg: broken \| b.jpg"):
        bad.add(["b.jpg: broken"])


def test_epoch_sampler_depends_only_on_seed_and_epoch_and_replays_from_a_skip():
    sampler = EpochSampler(10, shuffle=True, seed=3)
    sampler.set_epoch(2)
    epoch_two = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != epoch_two
    sampler.set_epoch(2)
    assert list(sampler) == epoch_two
    assert sorted(index for index, _ in epoch_two) == list(range(10))
    sampler.set_epoch(2, skip=4)
    assert list(sampler) == epoch_two[4:] and len(sampler) == 6
    assert all(0 <= draw < 1 for _, draw in epoch_two)


def test_sampler_draw_chooses_the_clip_start(tmp_path):
    folder = write_frames(tmp_path / "v", 20)
    dataset = ClipDataset([VideoRecord(folder, 20, 0)], num_seq=3, ds=2)
    # 20 frames, clips span 5 frames: starts 0..15; frame k is painted k + 1.
    assert dataset[(0, 0.0)][0][0, 0, 0, 0] == pytest.approx(1, abs=2)
    assert dataset[(0, 0.999)][0][0, 0, 0, 0] == pytest.approx(16, abs=2)


def test_a_validation_fraction_keeps_the_same_videos_in_their_order_whatever_the_seed(tmp_path):
    records = [VideoRecord(f"v{index}", 40 if index % 10 else 5, 0) for index in range(100)]
    torch.manual_seed(1)
    first = ClipDataset(records, num_seq=5, ds=3, fraction=0.3)
    torch.manual_seed(2)
    second = ClipDataset(records, num_seq=5, ds=3, fraction=0.3)
    assert first.videos == second.videos, "a fixed subset, not drawn from the run's random state"
    assert len(first.videos) == 27 and first.num_skipped == 10  # 30% of the 90 long enough
    assert [int(record.folder[1:]) for record in first.videos] == sorted(int(r.folder[1:]) for r in first.videos)
    assert ClipDataset(records, num_seq=5, ds=3, fraction=1.0).videos == [r for r in records if r.num_frames == 40]
    assert len(sample_videos(records[:2], 0.1)) == 1, "at least one video"


def test_a_validation_loader_that_drops_its_last_batch_keeps_full_batches_only(tmp_path):
    folder = write_frames(tmp_path / "v", 20)
    dataset = ClipDataset([VideoRecord(folder, 20, 0)] * 7, num_seq=3, ds=2)
    cpu = torch.device("cpu")
    assert len(make_loader(dataset, 3, 0, train=False, device=cpu)) == 3
    kept = make_loader(dataset, 3, 0, train=False, device=cpu, drop_last=True)
    assert [len(batch[2]) for batch in kept] == [3, 3]
    assert len(make_loader(dataset, 8, 0, train=False, device=cpu, drop_last=True)) == 1, "never no batch at all"
