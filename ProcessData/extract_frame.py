"""Videos -> JPEG frame folders: <frame_root>/<class>/<video>/image_00001.jpg ... (or resized videos, --out video)

    python ProcessData/extract_frame.py --video_root UCF101/videos --frame_root UCF101/frames
    python ProcessData/extract_frame.py --video_root K400/videos --frame_root K400/videos_240 --ext mp4 \
        --out video --short_side 240

Every <video>.<ext> below --video_root (at any depth) is written at the same place below --frame_root. Short side
resized to --dim / --short_side (aspect kept); frames as JPEG quality 80, or videos as MPEG-4 (mp4v), which
OpenCV writes with a keyframe every 12 frames: a clip then decodes from a nearby keyframe, where a full-resolution
download often has one every few seconds (docs/speed.md, "Decoding from videos"). A video counts as done only once
its output is complete: it is written under a hidden temporary name that is renamed at the end, so re-running after
an interruption redoes exactly the videos that were not finished.
"""
import argparse
import multiprocessing
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import cv2
from tqdm import tqdm

from CPCTrans.video import resize_short_side

JPEG_QUALITY = 80
VIDEO_CODEC = "mp4v"  # MPEG-4 part 2: what OpenCV's own FFmpeg writes into .mp4 (it has no H.264 encoder)


class FrameFolder:
    """Frames written as image_00001.jpg ... into a hidden folder, renamed to `target` when complete (`fps`, which
    frames do not keep, makes its constructor ResizedVideo's)."""

    def __init__(self, target: Path, fps: float):
        self.target, self.partial = target, target.with_name(f".{target.name}.partial")
        shutil.rmtree(self.partial, ignore_errors=True)
        self.partial.mkdir(parents=True)
        self.count = 0

    def write(self, frame) -> None:
        self.count += 1
        path = self.partial / f"image_{self.count:05d}.jpg"
        if not cv2.imwrite(str(path), frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
            raise OSError(f"cannot write {path}")

    def finish(self, complete: bool) -> None:
        if complete:
            self.partial.rename(self.target)
        else:
            shutil.rmtree(self.partial, ignore_errors=True)


class ResizedVideo:
    """Frames written into a hidden .mp4 at the source's frame rate, renamed to `target` when complete."""

    def __init__(self, target: Path, fps: float):
        self.target, self.partial = target, target.with_name(f".{target.stem}.partial.mp4")
        self.fps, self.writer, self.count = fps, None, 0
        target.parent.mkdir(parents=True, exist_ok=True)

    def write(self, frame) -> None:
        frame = frame[:frame.shape[0] // 2 * 2, :frame.shape[1] // 2 * 2]  # MPEG-4's 4:2:0 color needs even sides
        if self.writer is None:  # the size is known from the first resized frame
            size = (frame.shape[1], frame.shape[0])
            self.writer = cv2.VideoWriter(str(self.partial), cv2.VideoWriter_fourcc(*VIDEO_CODEC), self.fps, size)
            if not self.writer.isOpened():
                raise OSError(f"cannot write {self.partial}")
        self.writer.write(frame)
        self.count += 1

    def finish(self, complete: bool) -> None:
        if self.writer is not None:
            self.writer.release()
        if complete:
            self.partial.rename(self.target)
        else:
            self.partial.unlink(missing_ok=True)


OUTPUTS = {"frames": FrameFolder, "video": ResizedVideo}


def extract_video(video: Path, target: Path, short_side: int, out: str = "frames") -> tuple[Path, int, str]:
    """Writes every decodable frame of `video`, short side `short_side`, to `target` (a frame folder, or a video
    with out="video"); returns (video, frames written, error or '')."""
    cv2.setNumThreads(1)
    capture = cv2.VideoCapture(str(video))
    if not capture.isOpened():
        return video, 0, "OpenCV cannot open it"
    output = OUTPUTS[out](target, capture.get(cv2.CAP_PROP_FPS) or 25)
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            output.write(resize_short_side(frame, short_side))
    except OSError as error:
        output.finish(complete=False)
        return video, 0, str(error)
    finally:
        capture.release()
    if output.count == 0:
        output.finish(complete=False)
        return video, 0, "no frame could be decoded"
    output.finish(complete=True)
    return video, output.count, ""


def find_videos(video_root: Path, ext: str) -> list[Path]:
    """Every <name>.<ext> below `video_root`: <class>/<video> for UCF101 and HMDB51, <split>/<class>/<video> or
    flat for Kinetics."""
    return sorted(path for path in video_root.rglob(f"*.{ext}") if path.is_file() and not path.name.startswith("."))


def output_path(video: Path, video_root: Path, frame_root: Path, out: str) -> Path:
    relative = video.relative_to(video_root)
    return frame_root / relative.parent / (f"{video.stem}.mp4" if out == "video" else video.stem)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Extract JPEG frames from <video_root>/<class>/<video>.<ext>")
    parser.add_argument("--video_root", required=True, type=Path)
    parser.add_argument("--frame_root", required=True, type=Path, help="where the frames (or videos) are written")
    parser.add_argument("--dim", "--short_side", dest="dim", default=240, type=int,
                        help="short side of the written frames")
    parser.add_argument("--out", default="frames", choices=sorted(OUTPUTS),
                        help="frames: a folder of JPEGs per video; video: a resized .mp4 per video, to train "
                             "from with --source video")
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
        sys.exit(f"error: {args.video_root}: no *.{args.ext} files below it; check --video_root and --ext")
    targets = {video: output_path(video, args.video_root, args.frame_root, args.out) for video in videos}
    todo = [video for video in videos if not targets[video].exists()]
    print(f"{len(videos)} videos, {len(videos) - len(todo)} already extracted, {len(todo)} to do")
    failures = []
    # Spawned, not forked: a fork of a process whose thread pools are running (torch, OpenCV) can deadlock.
    with ProcessPoolExecutor(max_workers=max(1, args.workers), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(extract_video, video, targets[video], args.dim, args.out) for video in todo]
        for future in tqdm(as_completed(futures), total=len(futures), desc="extracting", dynamic_ncols=True):
            video, _, error = future.result()
            if error:
                failures.append(f"{video}: {error}")
    if failures:
        print(f"{len(failures)} of {len(todo)} videos failed (the others were extracted):", file=sys.stderr)
        for line in failures:
            print(f"  {line}", file=sys.stderr)
        return 1
    print(f"done: {args.out} in {args.frame_root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
