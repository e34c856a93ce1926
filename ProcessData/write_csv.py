"""Split lists + frame folders or video files -> train_split0N.csv / test_split0N.csv and classInd.txt, for each split N
whose lists are in --split_root (UCF101 and HMDB51 have 1-3; a dataset in their format may have fewer).

    python ProcessData/write_csv.py --dataset ucf101 --frame_root UCF101/frames --split_root UCF101/ucfTrainTestlist
    python ProcessData/write_csv.py --dataset k400 --video_root K400/videos --split_root K400/annotations
    python ProcessData/write_csv.py --dataset list --video_root videos --split_root lists   (train.txt, val.txt)

Each row: <frame folder or video file>,<number of frames>,<0-based class index>. A video file's frame count is
what its container declares, read once here. Kinetics (k400, k600, k700) and plain lists have one split: their
validation set is written as test_split01.csv. Listed videos that are not on disk, or cannot be opened, are left
out, named in the summary and listed in full in missing.txt / unreadable.txt beside the CSVs.
"""
import argparse
import csv
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tqdm import tqdm

from CPCTrans.video import VideoError, frame_count
from ProcessData.splits import FORMATS, ListedVideo, SplitError

REPO_ROOT = Path(__file__).resolve().parents[1]
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".flv", ".mpg", ".mpeg"}
FIRST_FRAME = "image_00001.jpg"


def count_frames(folder: Path) -> int:
    try:
        with os.scandir(folder) as entries:
            return sum(1 for entry in entries if entry.name.startswith("image_") and entry.name.endswith(".jpg"))
    except FileNotFoundError:
        return 0


def write_split_csv(rows: list[tuple[str, int, int]], path: Path) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    os.replace(temporary, path)


class Finder:
    """Where a listed video is below `root`: its frame folder (videos=False) or its video file (videos=True).

    Tried in turn: the path the list gives; <root>/<class>/<name> (UCF101's and HMDB51's layout); any file or
    frame folder below `root` named after the video or its alias, which covers Kinetics' layouts
    (<split>/<class>/<name>.mp4, or flat) whatever the class folders are called. `root` is walked once, when a
    video is first not where its class says.
    """

    def __init__(self, root: Path, videos: bool):
        self.root, self.videos = root, videos
        self.by_name: dict[str, list[Path]] | None = None

    def _walk(self) -> dict[str, list[Path]]:
        by_name: dict[str, list[Path]] = {}
        for folder, subfolders, files in os.walk(self.root):
            if self.videos:
                for name in files:
                    path = Path(folder) / name
                    if path.suffix.lower() in VIDEO_SUFFIXES:
                        by_name.setdefault(path.stem, []).append(path)
            elif FIRST_FRAME in files:
                by_name.setdefault(Path(folder).name, []).append(Path(folder))
                subfolders.clear()
        return by_name

    def _in_class_folder(self, folder: Path, name: str) -> Path | None:
        if not self.videos:
            return folder / name if (folder / name / FIRST_FRAME).is_file() else None
        if not folder.is_dir():  # Kinetics' layouts: one look, not one per suffix, for each of 240,000 videos
            return None
        for suffix in sorted(VIDEO_SUFFIXES):
            if (folder / f"{name}{suffix}").is_file():
                return folder / f"{name}{suffix}"
        return None

    def find(self, video: ListedVideo) -> Path | None:
        if video.path:
            given = self.root / video.path
            return given if self.videos else given.parent / given.stem
        direct = self._in_class_folder(self.root / video.class_name, video.video)
        if direct:
            return direct
        if self.by_name is None:
            self.by_name = self._walk()
        for name in (video.video, video.alias):
            found = sorted(self.by_name.get(name, []) if name else [])
            if found:
                # Two files of one name: the one in a folder named after the class (spaces or underscores).
                in_class = [path for path in found if path.parent.name.replace("_", " ") ==
                            video.class_name.replace("_", " ")]
                return (in_class or found)[0]
        return None


def video_frames(path: Path) -> tuple[Path, int, str]:
    """-> (path, frames the container declares, why it cannot be opened or '')."""
    try:
        return path, frame_count(str(path)), ""
    except VideoError as error:
        return path, 0, str(error)


def count_videos(paths: list[Path], workers: int) -> dict[Path, tuple[int, str]]:
    """Each video's declared frame count and why it cannot be opened; a few milliseconds a file, so Kinetics' 240,000
    are read by `workers` processes."""
    if workers <= 1 or len(paths) < 100:
        return {path: (frames, error) for path, frames, error in map(video_frames, paths)}
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = tqdm(pool.map(video_frames, paths, chunksize=64), total=len(paths), desc="reading frame counts")
        return {path: (frames, error) for path, frames, error in results}


class Tables:
    """The rows of every (stage, split), and the listed videos left out: not on disk, or not readable."""

    def __init__(self):
        self.rows: dict[tuple[str, int], list[tuple[str, int, int]]] = {}
        self.listed: dict[tuple[str, int], int] = {}
        self.missing: set[str] = set()
        self.unreadable: dict[str, str] = {}


def index_splits(split_format, split_root: Path, splits: list[int], finder: Finder, workers: int) -> Tables:
    listed = {(stage, split): split_format.videos(split_root, split, stage == "train")
              for split in splits for stage in ("train", "test")}
    located = {video: finder.find(video) for videos in listed.values() for video in videos}
    existing = sorted({path for path in located.values() if path and path.exists()})
    counts = (count_videos(existing, workers) if finder.videos else
              {path: (count_frames(path), "") for path in existing})
    tables = Tables()
    for key, videos in listed.items():
        rows = tables.rows.setdefault(key, [])
        tables.listed[key] = len(videos)
        for video in videos:
            name = video.path or f"{video.class_name}/{video.video}"
            path = located[video]
            if path not in counts:
                tables.missing.add(name)
                continue
            frames, error = counts[path]
            if frames:
                rows.append((str(path), frames, video.label))
            else:
                tables.unreadable[name] = error or f"{path}: holds no frames"
    return tables


def write_list(names: list[str], path: Path) -> None:
    if names:
        path.write_text("".join(f"{name}\n" for name in names))
    elif path.exists():
        path.unlink()


def summarise(title: str, names: list[str]) -> None:
    if not names:
        return
    print(title)
    for name in names[:20]:
        print(f"  {name}")
    if len(names) > 20:
        print(f"  ... and {len(names) - 20} more")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Write the CSV index of every split whose lists are given")
    parser.add_argument("--dataset", required=True, choices=sorted(FORMATS),
                        help="format of the split lists: ucf101, hmdb51, Kinetics' annotation CSVs (k400, k600, "
                             "k700), or list ('<path> <0-based label>' lines in train.txt and val.txt)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--frame_root", type=Path, help="output of extract_frame.py: rows name frame folders")
    source.add_argument("--video_root", type=Path,
                        help="the videos themselves: rows name video files (train with --source video)")
    parser.add_argument("--split_root", required=True, type=Path,
                        help="ucfTrainTestlist/ (ucf101), testTrainMulti_7030_splits/ (hmdb51), the folder of "
                             "train.csv and validate.csv (k400/k600/k700), or of train.txt and val.txt (list)")
    parser.add_argument("--csv_root", type=Path, default=None, help="default: ProcessData/data/<dataset>")
    parser.add_argument("--strict", action="store_true", help="fail when a listed video is missing or unreadable")
    parser.add_argument("--workers", default=4, type=int, help="processes reading video frame counts")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    csv_root = args.csv_root or REPO_ROOT / "ProcessData" / "data" / args.dataset
    root = args.video_root or args.frame_root
    if not root.is_dir():
        hint = "give the folder of the videos" if args.video_root else "run ProcessData/extract_frame.py first"
        sys.exit(f"error: {root}: folder not found; {hint}")
    split_format = FORMATS[args.dataset]
    finder = Finder(root.resolve(), videos=args.video_root is not None)
    try:
        classes = split_format.classes(args.split_root)
        splits = split_format.split_numbers(args.split_root)
        if not splits:
            raise SplitError(f"{args.split_root}: no split lists found; --split_root must hold the official lists")
        tables = index_splits(split_format, args.split_root, splits, finder, args.workers)
    except SplitError as error:
        sys.exit(f"error: {error}")
    missing, unreadable = sorted(tables.missing), sorted(tables.unreadable)
    what = "video file" if args.video_root else "frame folder"
    if (missing or unreadable) and args.strict:
        sys.exit(f"error: {len(missing)} listed videos have no {what} under {finder.root} and {len(unreadable)} "
                 f"cannot be read (first: {(missing + unreadable)[0]}); extract or fix them, or drop --strict")
    csv_root.mkdir(parents=True, exist_ok=True)
    (csv_root / "classInd.txt").write_text("".join(f"{i} {name}\n" for i, name in enumerate(classes, 1)))
    for (stage, split), rows in tables.rows.items():
        write_split_csv(rows, csv_root / f"{stage}_split{split:02d}.csv")
        left_out = tables.listed[stage, split] - len(rows)
        print(f"{stage}_split{split:02d}.csv: {len(rows)} videos" + (f", {left_out} left out" if left_out else ""))
    if args.dataset not in ("ucf101", "hmdb51"):
        print("one split: the validation list is test_split01.csv")
    else:
        unlisted = sorted({1, 2, 3} - set(splits))
        if unlisted:
            print(f"no lists for split {', '.join(map(str, unlisted))} in {args.split_root}: not indexed")
    write_list(missing, csv_root / "missing.txt")
    write_list([f"{name}: {tables.unreadable[name]}" for name in unreadable], csv_root / "unreadable.txt")
    summarise(f"{len(missing)} listed videos have no {what} under {finder.root} and were left out "
              f"(all in {csv_root / 'missing.txt'}):", missing)
    summarise(f"{len(unreadable)} listed videos cannot be read and were left out (all in "
              f"{csv_root / 'unreadable.txt'}):", [f"{name}: {tables.unreadable[name]}" for name in unreadable])
    print(f"wrote {csv_root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
