"""Videos -> JPEG frame folders: <frame_root>/<class>/<video>/image_00001.jpg ...

    python ProcessData/extract_frame.py --video_root UCF101/videos --frame_root UCF101/frames

Short side resized to --dim (aspect kept), JPEG quality 80. A video counts as done only once its
folder is complete: frames are written to a hidden temporary folder that is renamed at the end,
so re-running after an interruption redoes exactly the videos that were not finished.
"""
import argparse
import multiprocessing
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import cv2
from tqdm import tqdm

JPEG_QUALITY = 80


def resized_shape(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side equal to `short_side` and the aspect ratio kept."""
    scale = short_side / min(height, width)
    return max(1, round(width * scale)), max(1, round(height * scale))


def extract_video(video: Path, out_dir: Path, short_side: int) -> tuple[Path, int, str]:
    """Writes every decodable frame of `video` into `out_dir`; returns (video, frames written, error or '')."""
    cv2.setNumThreads(1)
    partial = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    capture = cv2.VideoCapture(str(video))
    if not capture.isOpened():
        return video, 0, "OpenCV cannot open it"
    partial.mkdir(parents=True)
    count = 0
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            height, width = frame.shape[:2]
            size = resized_shape(height, width, short_side)
            interpolation = cv2.INTER_AREA if size[1] < height else cv2.INTER_LINEAR
            count += 1
            target = partial / f"image_{count:05d}.jpg"
            if not cv2.imwrite(str(target), cv2.resize(frame, size, interpolation=interpolation),
                               [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
                shutil.rmtree(partial, ignore_errors=True)
                return video, 0, f"cannot write {target}"
    finally:
        capture.release()
    if count == 0:
        shutil.rmtree(partial, ignore_errors=True)
        return video, 0, "no frame could be decoded"
    partial.rename(out_dir)
    return video, count, ""


def find_videos(video_root: Path, ext: str) -> list[Path]:
    return sorted(path for path in video_root.glob(f"*/*.{ext}") if path.is_file())


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Extract JPEG frames from <video_root>/<class>/<video>.<ext>")
    parser.add_argument("--video_root", required=True, type=Path)
    parser.add_argument("--frame_root", required=True, type=Path)
    parser.add_argument("--dim", default=240, type=int, help="short side of the written frames")
    parser.add_argument("--workers", default=4, type=int, help="videos extracted in parallel")
    parser.add_argument("--ext", default="avi", help="video file extension")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.video_root.is_dir():
        sys.exit(f"error: {args.video_root}: video folder not found; "
                 f"give --video_root <folder with one folder per class>")
    videos = find_videos(args.video_root, args.ext.lstrip("."))
    if not videos:
        sys.exit(f"error: {args.video_root}: no <class>/*.{args.ext} files; check --video_root and --ext")
    targets = {video: args.frame_root / video.parent.name / video.stem for video in videos}
    todo = [video for video in videos if not targets[video].is_dir()]
    print(f"{len(videos)} videos, {len(videos) - len(todo)} already extracted, {len(todo)} to do")
    failures = []
    # Spawned, not forked: a fork of a process whose thread pools are running (torch, OpenCV) can deadlock.
    with ProcessPoolExecutor(max_workers=max(1, args.workers), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(extract_video, video, targets[video], args.dim) for video in todo]
        for future in tqdm(as_completed(futures), total=len(futures), desc="extracting", dynamic_ncols=True):
            video, _, error = future.result()
            if error:
                failures.append(f"{video}: {error}")
    if failures:
        print(f"{len(failures)} of {len(todo)} videos failed (the others were extracted):", file=sys.stderr)
        for line in failures:
            print(f"  {line}", file=sys.stderr)
        return 1
    print(f"done: frames in {args.frame_root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
