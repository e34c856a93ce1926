"""Finds the videos that cannot be opened or decoded to their last frame, before a training run meets them.

    python ProcessData/check_videos.py --video_root K400/videos --ext mp4 --workers 8

Every <video>.<ext> below --video_root is decoded to the end, and counts as broken when it cannot be opened,
decodes no frame, or decodes fewer frames than its container declares (truncated: write_csv.py records the declared
count, so a clip near the end would fail). Results go to a JSON report (--report) as they come: an interrupted check
resumes where it stopped, and a file changed since it was checked is checked again. Training replaces a clip it
cannot read and counts it (--max_bad_samples); this check names them all at once.
"""
import argparse
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import cv2
from tqdm import tqdm

from CPCTrans.video import VideoError, frame_count, open_video
from ProcessData.extract_frame import find_videos

SAVE_EVERY_SECONDS = 30


def check_video(path: Path) -> dict:
    """-> {"frames": decoded, "declared": the container's count, "error": why it is broken, or ""}."""
    cv2.setNumThreads(1)
    try:
        declared = frame_count(str(path))
        capture = open_video(str(path))
    except VideoError as error:
        return {"frames": 0, "declared": 0, "error": str(error)}
    decoded = 0
    try:
        while capture.grab():
            decoded += 1
    finally:
        capture.release()
    error = ""
    if decoded == 0:
        error = f"{path}: no frame can be decoded"
    elif decoded < declared:
        error = f"{path}: decodes {decoded} of the {declared} frames its container declares (truncated)"
    return {"frames": decoded, "declared": declared, "error": error}


def file_stamp(path: Path) -> list:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


class Report:
    """The JSON report: one entry per video (relative to the video root), saved atomically."""

    def __init__(self, path: Path, video_root: Path):
        self.path, self.video_root = path, video_root
        self.videos: dict[str, dict] = {}
        if path.is_file():
            try:
                saved = json.loads(path.read_text())
                self.videos = saved["videos"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise SystemExit(f"error: {path}: not a report of check_videos.py; give another --report or "
                                 f"delete it") from None

    def key(self, video: Path) -> str:
        return str(video.relative_to(self.video_root))

    def is_current(self, video: Path) -> bool:
        entry = self.videos.get(self.key(video))
        return entry is not None and entry.get("stamp") == file_stamp(video)

    def add(self, video: Path, result: dict) -> None:
        self.videos[self.key(video)] = {**result, "stamp": file_stamp(video)}

    def broken(self) -> list[str]:
        return sorted(name for name, entry in self.videos.items() if entry["error"])

    def save(self) -> None:
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        temporary.write_text(json.dumps({"video_root": str(self.video_root), "videos": self.videos,
                                         "broken": self.broken()}, indent=1))
        os.replace(temporary, self.path)


def check_all(videos: list[Path], report: Report, workers: int) -> None:
    """Checks `videos` in `workers` processes, saving the report every SAVE_EVERY_SECONDS and when stopped."""
    last_save = time.monotonic()
    try:
        with ProcessPoolExecutor(max(1, workers), mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(check_video, video): video for video in videos}
            for future in tqdm(as_completed(futures), total=len(futures), desc="checking", dynamic_ncols=True):
                report.add(futures[future], future.result())
                if time.monotonic() - last_save > SAVE_EVERY_SECONDS:
                    report.save()
                    last_save = time.monotonic()
    finally:
        report.save()


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="List the videos that cannot be opened or decoded to the end")
    parser.add_argument("--video_root", required=True, type=Path)
    parser.add_argument("--ext", default="mp4", help="video file extension")
    parser.add_argument("--workers", default=4, type=int, help="videos checked in parallel")
    parser.add_argument("--report", type=Path, default=Path("check_videos.json"),
                        help="the JSON report, read first to skip the videos it already holds")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.video_root.is_dir():
        sys.exit(f"error: {args.video_root}: video folder not found; give --video_root the folder of the videos")
    video_root = args.video_root.resolve()
    videos = find_videos(video_root, args.ext.lstrip("."))
    if not videos:
        sys.exit(f"error: {args.video_root}: no *.{args.ext} files below it; check --video_root and --ext")
    report = Report(args.report, video_root)
    todo = [video for video in videos if not report.is_current(video)]
    print(f"{len(videos)} videos, {len(videos) - len(todo)} checked before (in {args.report}), {len(todo)} to check")
    check_all(todo, report, args.workers)
    on_disk = {report.key(video) for video in videos}
    broken = [name for name in report.broken() if name in on_disk]
    print(f"{len(broken)} of {len(videos)} videos are broken (report: {args.report}):")
    for name in broken:
        print(f"  {report.videos[name]['error']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
