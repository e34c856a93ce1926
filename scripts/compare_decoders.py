"""Random-clip decoding speed and seeking exactness of the video decoders a loader could use, on your footage.

    python scripts/compare_decoders.py --videos 'K400/videos/val/*/*.mp4' --short_side 240

For each decoder installed (OpenCV always; PyAV and torchcodec when importable), each in a fresh process on one
thread: clips/s decoding `--num_seq` frames `--ds` apart from random starts and resizing them to `--short_side`, the
peak memory decoding added to the process, and whether the first 20 clips equal the same frames of a decode from the
first frame by OpenCV, the loader's decoder (exact seeking). Only OpenCV is a dependency of the repository; the
others are here to compare.
"""
import argparse
import glob
import importlib.util
import multiprocessing
import random
import resource
import sys
import time

import cv2
import numpy as np

from CPCTrans.video import clip_frames, frame_count, read_all_frames, resize_short_side


def pyav_clip(path: str, indices: list[int]) -> list[np.ndarray]:
    import av
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        frame_time = 1 / (stream.average_rate * stream.time_base)
        container.seek(int(indices[0] * frame_time), stream=stream, backward=True)
        wanted, frames = set(indices), {}
        for frame in container.decode(stream):
            index = round(frame.pts / frame_time)
            if index in wanted:
                frames[index] = frame.to_ndarray(format="rgb24")
            if index >= indices[-1]:
                break
    return [frames[index] for index in indices]


def torchcodec_clip(path: str, indices: list[int], seek_mode: str = "exact") -> list[np.ndarray]:
    from torchcodec.decoders import VideoDecoder
    decoder = VideoDecoder(path, seek_mode=seek_mode, num_ffmpeg_threads=1, dimension_order="NHWC")
    return list(decoder.get_frames_at(indices).data.numpy())


def torchcodec_approximate_clip(path: str, indices: list[int]) -> list[np.ndarray]:
    return torchcodec_clip(path, indices, "approximate")


# name -> (the module it needs beyond the repository's, the function decoding a clip's frames as RGB arrays)
DECODERS = {"opencv": (None, clip_frames), "pyav": ("av", pyav_clip), "torchcodec": ("torchcodec", torchcodec_clip),
            "torchcodec-approximate": ("torchcodec", torchcodec_approximate_clip)}


def installed(name: str) -> bool:
    module = DECODERS[name][0]
    return module is None or importlib.util.find_spec(module) is not None


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2 ** 20


def measure(name: str, videos: list[str], clips: int, num_seq: int, ds: int, short_side: int, seed: int) -> dict:
    """Run in a fresh process: the peak memory is then this decoder's alone."""
    cv2.setNumThreads(1)
    decode = DECODERS[name][1]
    rng = random.Random(seed)
    lengths = {video: frame_count(video) for video in videos}
    jobs = []
    for _ in range(clips):
        video = rng.choice(videos)
        start = rng.randrange(lengths[video] - (num_seq - 1) * ds)
        jobs.append((video, [start + step * ds for step in range(num_seq)]))
    for video, indices in jobs[:3]:  # loads the decoder's libraries
        decode(video, indices)
    before = rss_mib()
    began = time.perf_counter()
    for video, indices in jobs:
        [resize_short_side(frame, short_side) for frame in decode(video, indices)]
    seconds = time.perf_counter() - began
    peak = peak_rss_mib() - before
    checked = jobs[:20]
    exact = 0
    for video, indices in checked:
        everything = read_all_frames(video)
        exact += all(np.array_equal(a, b) for a, b in zip(decode(video, indices), (everything[i] for i in indices)))
    return {"clips_per_s": clips / seconds, "peak_mib": max(0.0, peak), "exact": f"{exact}/{len(checked)}"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", required=True, nargs="+", help="video files or glob patterns")
    parser.add_argument("--clips", default=100, type=int)
    parser.add_argument("--num_seq", default=5, type=int)
    parser.add_argument("--ds", default=3, type=int)
    parser.add_argument("--short_side", default=240, type=int)
    parser.add_argument("--seed", default=0, type=int)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    videos = sorted({path for pattern in args.videos for path in glob.glob(pattern)})
    if not videos:
        sys.exit(f"error: no file matches {' '.join(args.videos)}; give --videos video files or glob patterns")
    print(f"{len(videos)} videos, {args.clips} clips of {args.num_seq} frames {args.ds} apart, short side "
          f"{args.short_side}, one thread")
    print("| decoder | clips/s | memory added by decoding (MiB, peak) | clips equal to a decode from the start |")
    print("| --- | --- | --- | --- |")
    spawn = multiprocessing.get_context("spawn")
    for name in DECODERS:
        if not installed(name):
            print(f"| {name} | not installed | | |")
            continue
        with spawn.Pool(1) as pool:
            result = pool.apply(measure, (name, videos, args.clips, args.num_seq, args.ds, args.short_side, args.seed))
        print(f"| {name} | {result['clips_per_s']:.1f} | {result['peak_mib']:.0f} | {result['exact']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
