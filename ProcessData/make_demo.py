"""The embedded demo dataset: real videos in UCF101's layout (or Kinetics'), whose class only motion tells.

    python ProcessData/make_demo.py --out demo_output
    python ProcessData/make_demo.py --out demo_k400 --format k400

Every video is a camera panning or zooming over a random textured canvas, or over one of your photographs
with --photos DIR (closer to real footage); the class is the camera's motion, so no single frame gives it away.
Written as <out>/videos/<Class>/v_<Class>_gNN_cNN.avi (MJPG) with official-format split lists in
<out>/ucfTrainTestlist/ (CRLF, like the release): split k tests on the k-th third of the groups.
With --format k400 the same videos are .mp4 files in Kinetics' layout, <out>/videos/<train|val>/<class>/
<youtube id>_<start:06d>_<end:06d>.mp4, listed in <out>/annotations/train.csv and validate.csv (CRLF); as in the
real Kinetics, some listed videos were never downloaded and one file is corrupt (cut in half).
Deterministic for a given --seed: --workers N renders and encodes the videos in N processes and writes the same
files.
"""
import argparse
import csv
import math
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

# Camera motion of each class: (horizontal, vertical, zoom) direction. Every class is unchanged by a
# horizontal flip (sideways pans go either way), so flip augmentation keeps labels valid.
CLASSES = {"PanUp": (0, -1, 0), "PanDown": (0, 1, 0), "PanSideways": (1, 0, 0), "ZoomIn": (0, 0, -1),
           "ZoomOut": (0, 0, 1)}
WIDTH, HEIGHT = 320, 240
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png"}


class DemoError(Exception):
    """Bad input a user can fix; the message names the file and what to do."""


def textured_canvas(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth color noise with a scatter of shapes: structure at several scales to track."""
    coarse = rng.integers(0, 256, size=(height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    canvas = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(rng.integers(30, 60)):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        if rng.random() < 0.5:
            cv2.circle(canvas, center, int(rng.integers(4, 24)), color, -1)
        else:
            corner = (center[0] + int(rng.integers(6, 40)), center[1] + int(rng.integers(6, 40)))
            cv2.rectangle(canvas, center, corner, color, -1)
    return canvas


class PhotoCanvases:
    """Canvases cut from the photographs of a folder: a random photo, mirrored half the time, scaled to cover the
    canvas (times 1 to 1.5) and cropped at a random place."""

    def __init__(self, folder: Path):
        if not folder.is_dir():
            raise DemoError(f"{folder}: --photos folder not found")
        self.paths = sorted(path for path in folder.iterdir() if path.suffix.lower() in PHOTO_SUFFIXES)
        if not self.paths:
            raise DemoError(f"{folder}: no .jpg, .jpeg or .png photos in this folder; give --photos a folder of them")
        for path in self.paths:  # before minutes of rendering; a photo is read again for each video that films it
            if not cv2.haveImageReader(str(path)):
                raise DemoError(f"{path}: OpenCV cannot read this image; convert it to JPEG or PNG, or move it out "
                                f"of the --photos folder")

    def photo(self, index: int) -> np.ndarray:
        image = cv2.imread(str(self.paths[index]), cv2.IMREAD_COLOR)
        if image is None:
            raise DemoError(f"{self.paths[index]}: OpenCV cannot decode this image; re-save it as JPEG or PNG, or "
                            f"move it out of the --photos folder")
        return image

    def __call__(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        photo = self.photo(int(rng.integers(len(self.paths))))
        if rng.random() < 0.5:
            photo = photo[:, ::-1]
        scale = max(height / photo.shape[0], width / photo.shape[1]) * rng.uniform(1.0, 1.5)
        size = (math.ceil(photo.shape[1] * scale), math.ceil(photo.shape[0] * scale))
        resized = cv2.resize(photo, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
        top, left = rng.integers(0, size[1] - height + 1), rng.integers(0, size[0] - width + 1)
        return np.ascontiguousarray(resized[top:top + height, left:left + width])


CanvasMaker = Callable[[np.random.Generator, int, int], np.ndarray]  # (rng, height, width) -> BGR canvas


@dataclass
class Camera:
    """Every random choice of one video."""

    canvas: np.ndarray
    dx: int
    dy: int
    zoom: int
    speed: float  # pan, pixels per frame
    rate: float  # zoom, log-scale per frame
    largest_scale: float


def draw_camera(rng: np.random.Generator, motion: tuple[int, int, int], frames: int,
                canvas: CanvasMaker = textured_canvas) -> Camera:
    """A pan of 2-5 px per frame or a zoom of 1-2% per frame, over a random canvas large enough for it."""
    dx, dy, zoom = motion
    if dx:
        dx = rng.choice([-1, 1])
    speed = rng.uniform(2.0, 5.0)
    rate = rng.uniform(0.01, 0.02) * zoom
    # Pans see the canvas at a random fixed scale, zooms sweep 1 -> largest: texture size tells no class.
    largest_scale = float(np.exp(abs(rate) * (frames - 1))) if zoom else rng.uniform(1.0, 2.0)
    travel = speed * (frames - 1) * (abs(dx) + abs(dy))
    canvas_w, canvas_h = int(WIDTH * largest_scale + travel) + 4, int(HEIGHT * largest_scale + travel) + 4
    return Camera(canvas(rng, canvas_h, canvas_w), dx, dy, zoom, speed, rate, largest_scale)


def film(camera: Camera, frames: int) -> list[np.ndarray]:
    canvas_h, canvas_w = camera.canvas.shape[:2]
    out = []
    for t in range(frames):
        progress = t - (frames - 1) / 2
        center_x = canvas_w / 2 + camera.dx * camera.speed * progress
        center_y = canvas_h / 2 + camera.dy * camera.speed * progress
        if camera.zoom:
            rate = camera.rate
            scale = float(np.exp(rate * t)) if rate > 0 else float(np.exp(-rate * (frames - 1 - t)))
        else:
            scale = camera.largest_scale
        # Maps each output pixel to its canvas position: a crop, a scale and a sub-pixel shift at once.
        to_canvas = np.array([[scale, 0, center_x - scale * WIDTH / 2], [0, scale, center_y - scale * HEIGHT / 2]])
        out.append(cv2.warpAffine(camera.canvas, to_canvas, (WIDTH, HEIGHT),
                                  flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP))
    return out


def camera_video(rng: np.random.Generator, motion: tuple[int, int, int], frames: int,
                 canvas: CanvasMaker = textured_canvas) -> list[np.ndarray]:
    """A camera moving over a random canvas: the frames of draw_camera's choices."""
    return film(draw_camera(rng, motion, frames, canvas), frames)


CODECS = {".avi": "MJPG", ".mp4": "mp4v"}  # what OpenCV's own FFmpeg can write for each container


def write_video_file(path: Path, frames: list[np.ndarray], fps: int = 25) -> None:
    codec = CODECS[path.suffix]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, (WIDTH, HEIGHT))
    if not writer.isOpened():
        raise OSError(f"{path}: OpenCV cannot write {codec} video here")
    for frame in frames:
        writer.write(frame)
    writer.release()


def write_lists(list_dir: Path, names: list[str], videos: list[tuple[str, int, str]], groups: int) -> None:
    """classInd.txt, trainlist0k.txt ('Class/file.avi label') and testlist0k.txt ('Class/file.avi'), CRLF."""
    list_dir.mkdir(parents=True, exist_ok=True)
    crlf = "\r\n"
    (list_dir / "classInd.txt").write_bytes("".join(f"{i} {n}{crlf}" for i, n in enumerate(names, 1)).encode())
    folds = np.array_split(np.arange(1, groups + 1), 3)
    for split, test_groups in enumerate(folds, 1):
        train_lines, test_lines = [], []
        for class_name, group, file_name in videos:
            entry = f"{class_name}/{file_name}"
            if group in test_groups:
                test_lines.append(entry + crlf)
            else:
                train_lines.append(f"{entry} {names.index(class_name) + 1}{crlf}")
        (list_dir / f"trainlist{split:02d}.txt").write_bytes("".join(train_lines).encode())
        (list_dir / f"testlist{split:02d}.txt").write_bytes("".join(test_lines).encode())


def write_video(path: Path, motion: tuple[int, int, int], frames: int, rng_state: dict, canvas: CanvasMaker) -> None:
    rng = np.random.default_rng()
    rng.bit_generator.state = rng_state
    write_video_file(path, camera_video(rng, motion, frames, canvas))


def render_videos(paths: list[tuple[Path, tuple[int, int, int]]], frames: int, rng: np.random.Generator,
                  workers: int, canvas: CanvasMaker) -> None:
    """Films and writes each (path, motion) in turn from `rng`: the same files whatever `workers`."""
    for path, _ in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
    if workers == 1:
        for path, motion in paths:
            write_video_file(path, camera_video(rng, motion, frames, canvas))
        return
    jobs = []
    for path, motion in paths:
        jobs.append((path, motion, frames, rng.bit_generator.state, canvas))
        draw_camera(rng, motion, frames, canvas)  # its draws, so the next video starts after them
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(write_video, *zip(*jobs), chunksize=8))


def make_demo(out: Path, groups: int, clips: int, frames: int, seed: int, workers: int = 1,
              canvas: CanvasMaker = textured_canvas) -> None:
    """The videos and split lists; the same files whatever `workers` (processes rendering and encoding videos).
    `canvas` makes what the camera films (textured_canvas, or PhotoCanvases)."""
    rng = np.random.default_rng(seed)
    names = sorted(CLASSES)
    videos = [(class_name, group, f"v_{class_name}_g{group:02d}_c{clip:02d}.avi")
              for class_name in names for group in range(1, groups + 1) for clip in range(1, clips + 1)]
    paths = [(out / "videos" / class_name / file_name, CLASSES[class_name]) for class_name, _, file_name in videos]
    render_videos(paths, frames, rng, workers, canvas)
    write_lists(out / "ucfTrainTestlist", names, videos, groups)


KINETICS_LABELS = {"PanUp": "pan up", "PanDown": "pan down", "PanSideways": "pan sideways", "ZoomIn": "zoom in",
                   "ZoomOut": "zoom out"}  # with spaces, as Kinetics' labels are
YOUTUBE_ID_CHARACTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@dataclass
class KineticsDemo:
    """What make_kinetics_demo wrote: the listed videos (label, youtube id, start, end, split) and which of them
    are missing or corrupt on disk."""

    listed: list[tuple[str, str, int, int, str]]
    missing: list[str]
    corrupt: list[str]


def make_kinetics_demo(out: Path, groups: int, clips: int, frames: int, seed: int, workers: int = 1,
                       canvas: CanvasMaker = textured_canvas) -> KineticsDemo:
    """The demo's videos in Kinetics' layout: the last third of each class's groups is its validation set. Of the
    listed videos, the first of each split's last class is never written and the second of the first class's
    training videos is cut in half."""
    rng = np.random.default_rng(seed)
    listed, paths = [], []
    for class_name in sorted(CLASSES):
        for group in range(1, groups + 1):
            for _ in range(clips):
                split = "validate" if group > groups - groups // 3 else "train"
                youtube_id = "".join(rng.choice(list(YOUTUBE_ID_CHARACTERS), 11))
                start = int(rng.integers(0, 300))
                label = KINETICS_LABELS[class_name]
                listed.append((label, youtube_id, start, start + 10, split))
                folder = out / "videos" / ("train" if split == "train" else "val") / label.replace(" ", "_")
                paths.append((folder / f"{youtube_id}_{start:06d}_{start + 10:06d}.mp4", CLASSES[class_name]))
    last_label = KINETICS_LABELS[sorted(CLASSES)[-1]]
    missing = [next(i for i, row in enumerate(listed) if row[0] == last_label and row[4] == split)
               for split in ("train", "validate")]
    corrupt = [i for i, row in enumerate(listed) if row[4] == "train"][1]
    render_videos([job for i, job in enumerate(paths) if i not in missing], frames, rng, workers, canvas)
    whole = paths[corrupt][0].read_bytes()
    paths[corrupt][0].write_bytes(whole[:len(whole) // 2])
    annotations = out / "annotations"
    annotations.mkdir(parents=True, exist_ok=True)
    for split in ("train", "validate"):
        with open(annotations / f"{split}.csv", "w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\r\n")
            writer.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
            writer.writerows(row for row in listed if row[4] == split)
    return KineticsDemo(listed, [paths[i][0].stem for i in missing], [paths[corrupt][0].stem])


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Write the motion-only demo dataset in UCF101's format")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--format", default="ucf101", choices=("ucf101", "k400"),
                        help="ucf101: .avi files and split lists in UCF101's layout; k400: .mp4 files and "
                             "annotation CSVs in Kinetics' layout, some listed videos missing, one corrupt")
    parser.add_argument("--groups", default=6, type=int, help="source groups per class (gNN); a multiple of 3")
    parser.add_argument("--clips", default=3, type=int, help="clips per group (cNN)")
    parser.add_argument("--frames", default=40, type=int, help="frames per video")
    parser.add_argument("--seed", default=0, type=int)
    parser.add_argument("--workers", default=1, type=int, help="processes rendering and encoding videos (same files)")
    parser.add_argument("--photos", type=Path, default=None,
                        help="film pans and zooms over random crops of the .jpg/.png photographs in this folder "
                             "instead of textured canvases")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.groups < 3:
        sys.exit("error: --groups must be at least 3 (one third of the groups is tested per split)")
    if args.workers < 1:
        sys.exit(f"error: --workers must be at least 1, got {args.workers}")
    try:
        canvas = PhotoCanvases(args.photos) if args.photos else textured_canvas
        if args.format == "k400":
            demo = make_kinetics_demo(args.out, args.groups, args.clips, args.frames, args.seed, args.workers, canvas)
            print(f"wrote {len(demo.listed)} listed videos ({len(demo.missing)} of them never written, "
                  f"{len(demo.corrupt)} corrupt) and annotation CSVs to {args.out}")
        else:
            make_demo(args.out, args.groups, args.clips, args.frames, args.seed, args.workers, canvas)
            print(f"wrote {len(CLASSES) * args.groups * args.clips} videos and split lists to {args.out}")
    except DemoError as error:
        sys.exit(f"error: {error}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
