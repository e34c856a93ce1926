"""Throughput of pretraining, piece by piece and end to end, on real JPEG frame folders or video files.

    python CPCTrans/benchmark.py --img_dim 224 --batch_size 16 --num_seq 5 --pred_step 3
    python CPCTrans/benchmark.py --source video --video_root K400/videos_240

Without --frame_root it first writes its own 320x240 JPEG folders (the demo dataset's camera
motion, JPEG quality 80, as extract_frame.py writes them). With --source video it reads videos (--video_root, or
.mp4 files of the same footage that it writes, as extract_frame.py --out video does), and also measures the loader
on the same footage extracted to frames. Prints a table and one JSON line:
model step alone (augmented input already on the device), augmentation alone, loader alone
(read, decode, collate and copy to the device), end to end, peak GPU memory of the end-to-end run.
On a GPU every timing follows a warm-up and a synchronisation; model-step and augmentation numbers
are medians of per-step times, loader and end-to-end numbers are throughput over all timed steps.
--profile TRACE then records as many end-to-end steps with torch.profiler, every thread and the GPU.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, _ExperimentalConfig, profile
from torch.utils.data import DataLoader

from CPCTrans.augment import ClipAugment, pretraining_recipe
from CPCTrans.cpc import FuturePredictor
from CPCTrans.data import SHORT_SIDE, ClipDataset, VideoRecord, clips_to_device, make_loader
from CPCTrans.main import train_step
from CPCTrans.prefetch import DeviceBatches
from CPCTrans.distributed import shutdown
from CPCTrans.runtime import adam, add_resize_flag, add_source_flags, add_speed_flags, prepare_model, start_processes
from CPCTrans.video import frame_count
from ProcessData.extract_frame import extract_video, find_videos
from ProcessData.make_demo import CLASSES, camera_video, write_video_file


def write_frame_folders(root: Path, videos: int, frames: int, seed: int = 0) -> list[VideoRecord]:
    rng = np.random.default_rng(seed)
    motions = list(CLASSES.values())
    records = []
    for index in range(videos):
        folder = root / f"video{index:04d}"
        folder.mkdir(parents=True)
        for number, frame in enumerate(camera_video(rng, motions[index % len(motions)], frames), 1):
            cv2.imwrite(str(folder / f"image_{number:05d}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, 80])
        records.append(VideoRecord(str(folder), frames, 0))
    return records


def write_videos(root: Path, videos: int, frames: int, seed: int = 0) -> list[VideoRecord]:
    """The footage of write_frame_folders as .mp4 files (mp4v, as extract_frame.py --out video writes them)."""
    rng = np.random.default_rng(seed)
    motions = list(CLASSES.values())
    root.mkdir(parents=True)
    for index in range(videos):
        write_video_file(root / f"video{index:04d}.mp4", camera_video(rng, motions[index % len(motions)], frames))
    return read_video_root(root)


def read_video_root(root: Path) -> list[VideoRecord]:
    """Every .mp4 and .avi below `root` becomes a video."""
    paths = find_videos(root, "mp4") + find_videos(root, "avi")
    return [VideoRecord(str(path), frame_count(str(path)), 0) for path in paths]


def extract_frames(records: list[VideoRecord], root: Path, short_side: int) -> list[VideoRecord]:
    """The videos' frames as extract_frame.py writes them: the frame source's footage for a comparison."""
    extracted = []
    for index, record in enumerate(records):
        folder = root / f"video{index:04d}"
        _, frames, error = extract_video(Path(record.folder), folder, short_side)
        if error:
            raise SystemExit(f"error: {record.folder}: {error}")
        extracted.append(VideoRecord(str(folder), frames, 0))
    return extracted


def read_frame_root(root: Path) -> list[VideoRecord]:
    """Every folder of image_*.jpg under `root` (any depth) becomes a video."""
    folders = sorted({path.parent for path in root.rglob("image_00001.jpg")})
    return [VideoRecord(str(folder), len(list(folder.glob("image_*.jpg"))), 0) for folder in folders]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(run, steps: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(steps):
        synchronize(device)
        started = time.perf_counter()
        run()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def throughput_seconds(batches, run, steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per step over `steps` consecutive steps after `warmup`, each step consuming one batch."""
    for _ in range(warmup):
        run(next(batches))
    synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        run(next(batches))
    synchronize(device)
    return (time.perf_counter() - started) / steps


def union_ms(intervals: list[tuple[float, float]]) -> float:
    """Length in ms of the union of (start, end) intervals given in microseconds."""
    total, reached = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reached:
            total += end - max(start, reached)
            reached = end
    return total / 1000


def where_time_went(events, steps: int, wall_ms: float) -> str:
    """One line from a profile's events, per step: wall time; for each host thread the time inside torch
    operations and the operation that took most of it; the time inside the loader's next() (waiting for a batch
    and taking it over); the time the GPU was busy. Between operations a thread runs Python, holding the
    interpreter lock, which the profile does not see: threads whose times add up to the wall time took turns."""
    host, longest, loader, gpu = defaultdict(list), defaultdict(Counter), [], []
    for event in events:
        interval = (event.time_range.start, event.time_range.end)
        if event.device_type == DeviceType.CUDA:
            gpu.append(interval)
        elif event.is_user_annotation:  # a span around operations, or the loader's next()
            if event.name.startswith("enumerate(DataLoader)"):
                loader.append(interval)
        else:
            host[event.thread].append(interval)
            if event.cpu_parent is None or event.cpu_parent.is_user_annotation:
                longest[event.thread][event.name] += event.time_range.elapsed_us()
    threads = ", ".join(f"thread {thread} {union_ms(intervals) / steps:.2f} ms (most in "
                        f"{longest[thread].most_common(1)[0][0]})" for thread, intervals in sorted(host.items()))
    line = (f"per step, over the {steps} profiled steps: wall {wall_ms / steps:.2f} ms; inside torch operations: "
            f"{threads}; inside the loader's next() {union_ms(loader) / steps:.2f} ms")
    return line + (f"; GPU busy {union_ms(gpu) / steps:.2f} ms" if gpu else "")


def profile_run(run, steps: int, device: torch.device, trace: Path) -> None:
    """Runs `run`, `steps` training steps, under torch.profiler, every thread (batches are prepared in a background
    thread, prefetch.py) and the GPU; writes a Chrome trace, prints the operations that held the host longest and
    where each step's time went (where_time_went)."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, experimental_config=_ExperimentalConfig(profile_all_threads=True)) as profiler:
        started = time.perf_counter()
        run()
        wall_ms = (time.perf_counter() - started) * 1000
    profiler.export_chrome_trace(str(trace))
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    print(where_time_went(profiler.events(), steps, wall_ms))
    print(f"wrote the profile's trace to {trace}")


def endless(loader):
    while True:
        yield from loader


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark CPCTrans pretraining throughput")
    parser.add_argument("--img_dim", default=224, type=int)
    parser.add_argument("--batch_size", default=16, type=int)
    parser.add_argument("--num_seq", default=5, type=int)
    parser.add_argument("--pred_step", default=3, type=int)
    parser.add_argument("--ds", default=3, type=int)
    parser.add_argument("--steps", default=50, type=int, help="timed steps per measurement")
    parser.add_argument("--warmup", default=10, type=int)
    parser.add_argument("--frame_root", type=Path, default=None, help="existing frame folders to read")
    parser.add_argument("--video_root", type=Path, default=None,
                        help="with --source video: existing .mp4/.avi files to read (any depth)")
    parser.add_argument("--videos", default=64, type=int,
                        help="videos to write when no --frame_root (with --video_root: the first this many are read)")
    parser.add_argument("--frames", default=60, type=int, help="frames per written video")
    parser.add_argument("--profile", type=Path, default=None, metavar="TRACE",
                        help="then run --steps more end-to-end steps under torch.profiler: a Chrome trace of every "
                             "thread (and the GPU) to TRACE, gzip-compressed if it ends in .gz, and a table of the "
                             "operations that held the host longest")
    parser.add_argument("--nproc", type=int, default=1,
                        help="also measure this many processes (torchrun, one per GPU) and their scaling efficiency "
                             "against one process")
    add_resize_flag(parser, "nearest")
    add_source_flags(parser, "frames", SHORT_SIDE)
    add_speed_flags(parser)
    args = parser.parse_args(argv)
    if args.source == "video" and (args.frame_root or args.decode == "gpu"):
        parser.error("--source video reads video files: drop --frame_root and --decode gpu")
    if args.video_root and args.source != "video":
        parser.error("--video_root is read with --source video; add it")
    return args


def print_table(result: dict) -> None:
    print(f"device {result['device']}: batch {result['batch_size']}, {result['img_dim']}px, "
          f"{result['num_seq']} frames, amp={result['amp']}, compile={result['compile']}, resize={result['resize']}, "
          f"source={result['source']}, decode={result['decode']}, {result['workers']} workers, "
          f"prefetch {result['prefetch']}")
    print("| what | clips/s |\n|---|---|")
    for name in ("model_step", "augment", "loader", "loader_from_frames", "end_to_end"):
        if f"{name}_clips_per_s" in result:
            print(f"| {name.replace('_', ' ')} | {result[f'{name}_clips_per_s']:.1f} |")
    print(f"end to end / model step: {result['end_to_end_over_model_step']:.2f}; "
          f"peak GPU memory: {result['peak_gpu_memory_gib']} GiB")


def loader_seconds(records: list[VideoRecord], args: argparse.Namespace, source: str, device: torch.device,
                   processes) -> tuple[DataLoader, float]:
    """A training loader over `records` (repeated to last the run), and its seconds per batch copied to `device`."""
    clips_needed = args.batch_size * (args.steps + args.warmup) * processes.world_size
    dataset = ClipDataset(records * max(1, -(-clips_needed // len(records))), args.num_seq, args.ds,
                          encoded=args.decode == "gpu", source=source, short_side=args.short_side)
    loader = make_loader(dataset, args.batch_size, args.workers, train=True, device=device, rank=processes.rank,
                         world_size=processes.world_size)
    return loader, throughput_seconds(endless(loader), lambda batch: clips_to_device(batch[0], batch[1], device),
                                      args.steps, args.warmup, device)


def benchmark(args: argparse.Namespace, records: list[VideoRecord],
              frame_records: list[VideoRecord] | None = None) -> dict:
    """`frame_records`: the same footage as frame folders, whose loader is measured too (--source video)."""
    device, processes = start_processes(args)
    if processes.distributed and args.profile:
        raise SystemExit("--profile profiles one process; run it without torchrun")
    every_process = processes if processes.distributed else None  # global negatives, as pretraining's default
    model = FuturePredictor(num_seq=args.num_seq, pred_step=args.pred_step)
    step_model = prepare_model(model, device, args.compile, processes).train()
    optimizer = adam(model.parameters(), device, lr=1e-3, weight_decay=1e-5)
    augmenter = ClipAugment(pretraining_recipe("frame", resize=args.resize), args.img_dim, seed=0,
                            compiled=args.compile is not None)

    # Stored channel-last, as the loader hands clips out (data.stack_frames): the augmentation's timing includes
    # reordering them.
    raw = torch.randint(0, 256, (args.batch_size, args.num_seq, 240, 320, 3), dtype=torch.uint8,
                        device=device).movedim(-1, 2)
    sizes = torch.tensor([[240, 320]] * args.batch_size)
    inputs = augmenter(raw, sizes)
    model_s = median_seconds(lambda: train_step(step_model, optimizer, inputs, device, args.amp, every_process),
                             args.steps, args.warmup, device)
    augment_s = median_seconds(lambda: augmenter(raw, sizes), args.steps, args.warmup, device)
    loader, loader_s = loader_seconds(records, args, args.source, device, processes)
    per_second = {}
    if frame_records:
        per_second["loader_from_frames"] = args.batch_size / loader_seconds(frame_records, args, "frames", device,
                                                                             processes)[1]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # As in training: batches copied and augmented --prefetch steps ahead, one pass over the loader.
    def end_to_end(warmup: int) -> float:
        with DeviceBatches(loader, augmenter, device, args.prefetch, augmenter.generator) as batches:
            return throughput_seconds(batches, lambda batch: train_step(step_model, optimizer, batch.inputs, device,
                                                                        args.amp, every_process),
                                      args.steps, warmup, device)

    end_to_end_s = end_to_end(args.warmup)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    per_second.update({name: args.batch_size / seconds for name, seconds in
                       (("model_step", model_s), ("augment", augment_s), ("loader", loader_s),
                        ("end_to_end", end_to_end_s))})
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "img_dim": args.img_dim, "batch_size": args.batch_size, "num_seq": args.num_seq, "pred_step": args.pred_step,
        "amp": args.amp, "compile": args.compile, "resize": args.resize,
        "source": args.source, "decode": args.decode, "workers": args.workers, "prefetch": args.prefetch,
        **{f"{name}_clips_per_s": round(value, 1) for name, value in per_second.items()},
        "peak_gpu_memory_gib": None if peak is None else round(peak, 3),
        "end_to_end_over_model_step": round(per_second["end_to_end"] / per_second["model_step"], 3),
    }
    if processes.distributed:
        result = combine(processes.gather(result))
    # Printed before the profile, so that a failing profiler does not take the numbers with it.
    print_table(result)
    print(json.dumps(result))
    if args.profile:
        warmup = min(args.warmup, 1)
        profile_run(lambda: end_to_end(warmup), warmup + args.steps, device, args.profile)
    return result


def combine(results: list[dict]) -> dict:
    """Every process's result -> one: rank 0's settings, the clips/s of all processes added up (each process's
    under per_process)."""
    combined = {**results[0], "processes": len(results), "per_process": results}
    for key in results[0]:
        if key.endswith("_clips_per_s"):
            combined[key] = round(sum(result[key] for result in results), 1)
    return combined


def scaling(argv: list[str], nproc: int, single: dict) -> dict:
    """Runs the same benchmark in `nproc` processes under torchrun; their total clips/s against `nproc` times one
    process's."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               __file__, *argv]
    finished = subprocess.run(command, capture_output=True, text=True)
    if finished.returncode != 0:
        raise SystemExit(f"error: the {nproc}-process benchmark failed: {finished.stderr.strip().splitlines()[-1]}")
    several = json.loads(next(line for line in finished.stdout.splitlines() if line.startswith("{")))
    efficiency = {key: round(several[key] / (nproc * single[key]), 3) for key in single if key.endswith("_clips_per_s")}
    scaled = {"processes": nproc, "per_process_end_to_end_clips_per_s": [
        result["end_to_end_clips_per_s"] for result in several["per_process"]],
        "total_end_to_end_clips_per_s": several["end_to_end_clips_per_s"],
        "single_process_end_to_end_clips_per_s": single["end_to_end_clips_per_s"],
        "scaling_efficiency": efficiency}
    print(f"{nproc} processes: end to end {several['end_to_end_clips_per_s']:.1f} clips/s in all "
          f"({', '.join(str(value) for value in scaled['per_process_end_to_end_clips_per_s'])} per process), "
          f"{efficiency['end_to_end_clips_per_s']:.0%} of {nproc} x one process's "
          f"{single['end_to_end_clips_per_s']:.1f}")
    print(json.dumps(scaled))
    return scaled


def without_nproc(argv: list[str]) -> list[str]:
    """The command line less its --nproc N (or --nproc=N)."""
    kept, skip = [], False
    for flag in argv:
        if skip:
            skip = False
        elif flag == "--nproc":
            skip = True
        elif not flag.startswith("--nproc="):
            kept.append(flag)
    return kept


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        frame_records = None
        if args.source == "video":
            records = (read_video_root(args.video_root)[:args.videos] if args.video_root else
                       write_videos(Path(scratch) / "videos", args.videos, args.frames))
            if not records:
                raise SystemExit(f"error: {args.video_root}: no .mp4 or .avi file below it; give videos")
            frame_records = extract_frames(records, Path(scratch) / "frames", args.short_side)
        elif args.frame_root:
            records = read_frame_root(args.frame_root)
            if not records:
                raise SystemExit(f"error: {args.frame_root}: no image_00001.jpg below it; give extracted frames")
        else:
            records = write_frame_folders(Path(scratch), args.videos, args.frames)
        try:
            result = benchmark(args, records, frame_records)
        finally:
            shutdown()
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        result["scaling"] = scaling(without_nproc(argv), args.nproc, result)
    return result


if __name__ == "__main__":
    main()
