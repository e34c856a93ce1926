"""Clip datasets driven by the CSV index (docs/method.md, "Data formats"): one class for every dataset.

Workers read and decode JPEG frames (torchvision.io), or the frames a clip needs straight from its video file
(CPCTrans.video), and hand out uint8 clips; everything else happens batched on the training device
(CPCTrans.augment).
"""
import csv
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.nn import functional
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate
from torchvision.io import ImageReadMode, decode_jpeg, read_file
from tqdm import tqdm

from CPCTrans.device import to_device
from CPCTrans.resume import epoch_seed
from CPCTrans.video import VideoError, clip_frames

SOURCES = ("frames", "video")  # what the CSV's first column names: frame folders, or video files
SHORT_SIDE = 240  # frames decoded from videos are resized to this short side, as extract_frame.py writes them


class DataError(Exception):
    """Bad input a user can fix; the message names the file and what to do."""


@dataclass(frozen=True)
class VideoRecord:
    folder: str  # frame folder, or video file (--source video)
    num_frames: int
    label: int


def read_class_names(path: Path) -> list[str]:
    """classInd.txt ("1 ApplyEyeMakeup" per line, 1-based; Kinetics' names have spaces) -> names in index order."""
    if not path.is_file():
        raise DataError(f"{path}: class list not found; run ProcessData/write_csv.py first")
    names = {}
    for line_number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise DataError(f"{path}:{line_number}: expected '<index> <class name>', got {line!r}")
        names[int(parts[0])] = parts[1]
    if sorted(names) != list(range(1, len(names) + 1)):
        raise DataError(f"{path}: class indices must run 1..{len(names)} without gaps")
    return [names[index] for index in sorted(names)]


def read_index(path: Path, num_classes: int | None = None) -> list[VideoRecord]:
    """A split CSV (`<frame folder>,<number of frames>,<0-based label>` per row) -> records."""
    if not path.is_file():
        raise DataError(f"{path}: CSV index not found; run ProcessData/write_csv.py (or check --csv_root / --split)")
    records = []
    with open(path, newline="") as handle:
        for row_number, row in enumerate(csv.reader(handle), 1):
            try:
                folder, num_frames, label = row[0], int(row[1]), int(row[2])
            except (IndexError, ValueError):
                raise DataError(f"{path}:{row_number}: expected '<frame folder>,<frames>,<label>', got {row!r}; "
                                f"regenerate it with ProcessData/write_csv.py") from None
            if num_classes is not None and not 0 <= label < num_classes:
                raise DataError(f"{path}:{row_number}: label {label} is outside 0..{num_classes - 1} of classInd.txt")
            records.append(VideoRecord(folder, num_frames, label))
    if not records:
        raise DataError(f"{path}: the CSV index is empty; check the frame root given to write_csv.py")
    return records


def frame_path(folder: str, index: int) -> str:
    """0-based frame index -> its JPEG (files are numbered from 1)."""
    return str(Path(folder) / f"image_{index + 1:05d}.jpg")


def clip_start_range(num_frames: int, num_seq: int, ds: int) -> int:
    """How many start positions a clip of `num_seq` frames `ds` apart has (0: the video is too short)."""
    return max(0, num_frames - num_seq * ds + 1)


def clip_indices(start: int, num_seq: int, ds: int) -> list[int]:
    return [start + step * ds for step in range(num_seq)]


VAL_SUBSET_SEED = 0  # not --seed: runs of every seed validate on the same videos, and their numbers compare


def sample_videos(records: list[VideoRecord], fraction: float, seed: int = VAL_SUBSET_SEED) -> list[VideoRecord]:
    """A fixed random `fraction` of `records` (at least one), kept in their CSV order."""
    if fraction >= 1:
        return records
    count = max(1, round(fraction * len(records)))
    chosen = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed))[:count].sort().values
    return [records[index] for index in chosen.tolist()]


def window_starts(num_frames: int, num_seq: int, ds: int) -> list[int]:
    """Test time: frames 0, ds, 2ds, ... cut into consecutive non-overlapping windows of `num_seq`."""
    sampled = (num_frames + ds - 1) // ds
    return [window * num_seq * ds for window in range(sampled // num_seq)]


def read_frames(paths: list[str]) -> list[torch.Tensor]:
    """JPEG files -> their bytes, as uint8 tensors."""
    frames = []
    for path in paths:
        try:
            frames.append(read_file(path))
        except RuntimeError:
            raise DataError(f"{path}: frame missing or unreadable; re-run ProcessData/extract_frame.py for that "
                            f"video") from None
    return frames


def decode_frames(paths: list[str]) -> torch.Tensor:
    """JPEG files -> uint8 (N, 3, H, W)."""
    data = read_frames(paths)
    try:
        frames = decode_jpeg(data, mode=ImageReadMode.RGB)
    except RuntimeError:
        for path, encoded in zip(paths, data):
            try:
                decode_jpeg(encoded, mode=ImageReadMode.RGB)
            except RuntimeError as error:
                raise DataError(f"{path}: cannot decode this JPEG ({str(error).strip()}); "
                                f"re-extract its video with ProcessData/extract_frame.py") from None
        raise
    return stack_frames(frames)


def decode_video_clip(path: str, indices: list[int], short_side: int) -> torch.Tensor:
    """The frames at `indices` of a video file, short side resized to `short_side` -> uint8 (N, 3, H, W) stored
    channel-last, as decode_frames gives them."""
    try:
        frames = clip_frames(path, indices, short_side)
    except VideoError as error:
        raise DataError(str(error)) from None
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)


def stack_frames(frames: list[torch.Tensor]) -> torch.Tensor:
    """Tensors (..., 3, H, W) stored channel-last, as JPEG decoders give them -> stacked on a new first
    dimension, stored channel-last too: a plain copy. Stacking them channel-first is a transposing copy, much
    slower on a loader worker (docs/speed.md). The augmentation takes either layout."""
    return torch.stack([frame.movedim(-3, -1) for frame in frames]).movedim(-1, -3)


class ClipDataset(Dataset):
    """Clips of `num_seq` frames `ds` apart from the videos of one CSV.

    windows=False: one clip per video from a random start (training, validation).
    windows=True: every test window of every video, each item tagged with its video's index.
    encoded=True: items carry the JPEG files' bytes (all frames in one tensor, plus each file's length),
    to be decoded on the GPU by `clips_to_device`.
    source="video": the records name video files, whose frames are decoded and resized to `short_side`.
    replace_bad=True: a clip that cannot be read is replaced by the next readable one, and the
    item carries what went wrong (training); otherwise the DataError propagates.
    Videos shorter than num_seq * ds frames are left out and counted in `num_skipped`; `fraction` < 1 keeps a
    fixed random share of the others (sample_videos: the reference's validation subsets).
    Items are (frames, label, video index, problems).
    """

    MAX_REPLACEMENTS = 10

    def __init__(self, records: list[VideoRecord], num_seq: int, ds: int, windows: bool = False,
                 encoded: bool = False, replace_bad: bool = False, fraction: float = 1.0, source: str = "frames",
                 short_side: int = SHORT_SIDE):
        if encoded and source == "video":
            raise DataError("--decode gpu decodes JPEG frames; with --source video use --decode cpu")
        self.num_seq, self.ds, self.encoded, self.replace_bad = num_seq, ds, encoded, replace_bad
        self.source, self.short_side = source, short_side
        long_enough = [r for r in records if clip_start_range(r.num_frames, num_seq, ds) > 0]
        self.num_skipped = len(records) - len(long_enough)
        self.videos = sample_videos(long_enough, fraction)
        if windows:
            self.items = [(video, start) for video, record in enumerate(self.videos)
                          for start in window_starts(record.num_frames, num_seq, ds)]
        else:
            self.items = [(video, None) for video in range(len(self.videos))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, item):
        """`item` is an index, or (index, draw in [0, 1)) from EpochSampler choosing a random clip's start."""
        index, draw = item if isinstance(item, tuple) else (item, None)
        problems = []
        while True:
            try:
                return (*self._load(index, draw), tuple(problems))
            except DataError as error:
                if not self.replace_bad:
                    raise
                problems.append(str(error))
                if len(problems) > self.MAX_REPLACEMENTS:
                    raise DataError(f"{len(problems)} clips in a row cannot be read, "
                                    f"the first: {problems[0]}") from None
                index = (index + 1) % len(self.items)

    def _load(self, index: int, draw: float | None):
        video, start = self.items[index]
        record = self.videos[video]
        if start is None:
            draw = float(torch.rand(())) if draw is None else draw
            start = int(draw * clip_start_range(record.num_frames, self.num_seq, self.ds))
        indices = clip_indices(start, self.num_seq, self.ds)
        if self.source == "video":
            return decode_video_clip(record.folder, indices, self.short_side), record.label, video
        paths = [frame_path(record.folder, i) for i in indices]
        if self.encoded:
            files = read_frames(paths)
            frames = (torch.cat(files), torch.tensor([len(data) for data in files]))
        else:
            frames = decode_frames(paths)
        return frames, record.label, video


def frame_sizes(clips: list[torch.Tensor]) -> tuple[torch.Tensor, int, int]:
    """Clips (N, 3, H_i, W_i) -> each clip's (H_i, W_i) and the largest height and width, to pad to."""
    sizes = torch.tensor([clip.shape[-2:] for clip in clips])
    height, width = sizes.max(dim=0).values.tolist()
    return sizes, height, width


def stack_padded(clips: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips (N, 3, H_i, W_i) -> (B, N, 3, H, W) zero-padded to the largest frame, and each clip's (H_i, W_i).

    Stacked channel-last (see stack_frames) by default_collate, which in a loader worker writes the batch
    straight into shared memory, where the main process reads it: without it the batch is copied there once more.
    """
    sizes, height, width = frame_sizes(clips)
    channel_last = [clip.movedim(-3, -1) for clip in clips]
    padded = [clip if clip.shape[-3:-1] == (height, width)
              else functional.pad(clip, (0, 0, 0, width - clip.shape[-2], 0, height - clip.shape[-3]))
              for clip in channel_last]
    return default_collate(padded).movedim(-1, -3), sizes


def collate_clips(batch, stack=stack_padded):
    """-> clips (B, N, 3, H, W) uint8 and sizes (B, 2), labels, video indices, the problems of replaced clips;
    `stack` pads and stacks the decoded clips (stack_padded, or ReusedSharedBatches.stack).

    Encoded clips collate to (all JPEG bytes, lengths (B, N)) and sizes None: two tensors per batch,
    however many frames, so worker-to-main transfers stay cheap.
    """
    clips, labels, videos, problems = zip(*batch)
    problems = [problem for clip_problems in problems for problem in clip_problems]
    if isinstance(clips[0], tuple):
        data = torch.cat([clip[0] for clip in clips])
        lengths = torch.stack([clip[1] for clip in clips])
        return (data, lengths), None, torch.tensor(labels), torch.tensor(videos), problems
    stacked, sizes = stack(list(clips))
    return stacked, sizes, torch.tensor(labels), torch.tensor(videos), problems


class ReusedSharedBatches:
    """collate_clips for loader workers whose batches the main process copies as they arrive (into pinned memory,
    on CUDA): each worker writes its clips into a few shared-memory batches it takes in turn, instead of into a
    new one per batch, whose fresh pages cost more than the copy itself (docs/speed.md).

    Safe because a DataLoader hands a worker its batch k + prefetch_factor only once next() has returned that
    worker's batch k, and with pinned memory next() returns a copy made as the batch arrived: with `buffers` at
    prefetch_factor + 2, a batch's memory is written again two of the worker's batches after its copy was made.
    Not for loaders whose batches are used where they are (the CPU's): a batch kept would change under its user.
    """

    def __init__(self, buffers: int):
        self.buffers = buffers
        self.batches: list[torch.Tensor] = []  # each (B, N, H, W, 3), in shared memory
        self.turn = 0

    def _next_batch(self, shape: tuple) -> torch.Tensor:
        index, self.turn = self.turn, (self.turn + 1) % self.buffers
        if index == len(self.batches):
            self.batches.append(torch.empty(shape, dtype=torch.uint8).share_memory_())
        elif self.batches[index].shape != shape:  # a last, smaller batch; or larger frames
            self.batches[index] = torch.empty(shape, dtype=torch.uint8).share_memory_()
        return self.batches[index]

    def stack(self, clips: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """stack_padded into the next of the worker's batches."""
        sizes, height, width = frame_sizes(clips)
        stacked = self._next_batch((len(clips), clips[0].shape[0], height, width, clips[0].shape[1]))
        for target, clip in zip(stacked, clips):
            frames = clip.movedim(-3, -1)
            if frames.shape[1:3] != (height, width):
                target.zero_()  # the padding, which holds an earlier batch's pixels
            target[:, :frames.shape[1], :frames.shape[2]].copy_(frames)
        return stacked.movedim(-1, -3), sizes

    def __call__(self, batch):
        return collate_clips(batch, self.stack)


def clips_to_device(clips, sizes, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A collated batch -> uint8 clips on `device` and their frame sizes; encoded clips are decoded there."""
    if not isinstance(clips, tuple):
        return to_device(clips, device), sizes
    data, lengths = clips
    try:
        frames = decode_jpeg(list(torch.split(data, lengths.flatten().tolist())), mode=ImageReadMode.RGB,
                             device=device)
    except RuntimeError as error:
        raise DataError(f"a JPEG of this batch cannot be decoded on the GPU ({str(error).strip()}); "
                        f"run with --decode cpu to have the file named") from None
    steps = lengths.shape[1]
    return stack_padded([stack_frames(frames[i:i + steps]) for i in range(0, len(frames), steps)])


class EpochSampler(Sampler):
    """Order and random clip starts of one epoch, drawn in the main process from (seed, epoch) alone.

    Every epoch is reproducible whatever happened before it, which makes resuming exact:
    `set_epoch(epoch, skip)` replays an epoch from the `skip`-th item of its order.

    With several processes the order is the same in each, and rank r takes the r-th `batch_size` items of each
    step's global batch (`batch_size` x `world_size` consecutive items): one process with the global batch would
    see the same clips in each step, whatever the number of processes. Past the last whole global batch, the items left are
    dropped (`drop_last`) or split into one contiguous part per rank, each item read once.
    """

    def __init__(self, size: int, shuffle: bool, seed: int, batch_size: int = 1, rank: int = 0, world_size: int = 1,
                 drop_last: bool = False):
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.batch_size, self.rank, self.world_size, self.drop_last = batch_size, rank, world_size, drop_last
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def _share(self, order: list[int]) -> list[int]:
        if self.world_size == 1:
            return order
        chunk = self.batch_size * self.world_size
        whole = len(order) // chunk * chunk
        first, end = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        mine = [index for start in range(0, whole, chunk) for index in order[start + first:start + end]]
        if not self.drop_last:
            rest = order[whole:]
            part = -(-len(rest) // self.world_size)
            mine += rest[self.rank * part:(self.rank + 1) * part]
        return mine

    def __iter__(self):
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        order = torch.randperm(self.size, generator=generator) if self.shuffle else torch.arange(self.size)
        draws = torch.rand(self.size, generator=generator)
        for index in self._share(order[self.skip:].tolist()):
            yield index, float(draws[index])

    def __len__(self) -> int:
        return len(self._share(list(range(max(0, self.size - self.skip)))))


class BadSamples:
    """Clips replaced during training: each is logged; more than `limit` in a run ends it with the list."""

    def __init__(self, limit: int):
        self.limit = limit
        self.problems: list[str] = []

    def add(self, problems: list[str]) -> None:
        for problem in problems:
            tqdm.write(f"replaced an unreadable clip: {problem}")
        self.problems += problems
        if len(self.problems) > self.limit:
            raise DataError(f"{len(self.problems)} unreadable clips, more than --max_bad_samples {self.limit}: "
                            + " | ".join(self.problems))


def check_source(path: Path, records: list[VideoRecord], source: str) -> None:
    """Refuses a CSV of video files read as frame folders, and the other way round (its first row tells)."""
    first = Path(records[0].folder)
    if source == "frames" and first.is_file():
        raise DataError(f"{path}: indexes video files ({first}); add --source video")
    if source == "video" and first.is_dir():
        raise DataError(f"{path}: indexes frame folders ({first}); drop --source video, or index the videos with "
                        f"ProcessData/write_csv.py --video_root")


def split_dataset(path: Path, num_classes: int, num_seq: int, ds: int, windows: bool = False,
                  encoded: bool = False, replace_bad: bool = False, fraction: float = 1.0, source: str = "frames",
                  short_side: int = SHORT_SIDE) -> ClipDataset:
    """The ClipDataset of one split CSV (a fixed `fraction` of its videos); says how many videos were too short
    and how many a fraction kept, refuses a split with none left."""
    records = read_index(path, num_classes)
    check_source(path, records, source)
    dataset = ClipDataset(records, num_seq, ds, windows=windows, encoded=encoded, replace_bad=replace_bad,
                          fraction=fraction, source=source, short_side=short_side)
    if dataset.num_skipped:
        print(f"{path.name}: skipped {dataset.num_skipped} of {len(records)} videos shorter than "
              f"num_seq * ds = {num_seq * ds} frames")
    if fraction < 1:
        print(f"{path.name}: using a fixed {fraction:g} of its videos, {len(dataset.videos)} of "
              f"{len(records) - dataset.num_skipped} (--val_fraction)")
    if len(dataset) == 0:
        raise DataError(f"{path}: no video has {num_seq * ds} frames; lower --num_seq or --ds")
    return dataset


def make_loader(dataset: ClipDataset, batch_size: int, workers: int, train: bool, device: torch.device,
                seed: int = 0, drop_last: bool | None = None, rank: int = 0, world_size: int = 1) -> DataLoader:
    """Batches of `dataset` for process `rank` of `world_size`, shuffled when `train`; the loader's `sampler` is an
    EpochSampler (call its set_epoch each epoch). A last smaller global batch is dropped when `drop_last` (by
    default when `train`), unless it is the only one."""
    drop_last = (train if drop_last is None else drop_last) and len(dataset) >= batch_size * world_size
    if dataset.source == "video":
        # Workers decode and resize with OpenCV: one thread each, as they share the cores. Set here, before they
        # fork: a worker that changes the thread pool it inherited can deadlock on the pool's copied locks.
        cv2.setNumThreads(1)
    pinned = device.type == "cuda" and not dataset.encoded
    prefetch_factor = 4 if workers > 0 else None
    collate = ReusedSharedBatches(prefetch_factor + 2) if pinned and workers > 0 else collate_clips
    sampler = EpochSampler(len(dataset), train, seed, batch_size, rank, world_size, drop_last)
    # A generator of its own: starting each pass draws a seed from it, which from the global RNG would shift the
    # dropout of a run resumed inside an epoch.
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, num_workers=workers,
                      collate_fn=collate, generator=torch.Generator(),
                      pin_memory=pinned, persistent_workers=workers > 0, prefetch_factor=prefetch_factor)
