"""Official split lists + frame folders -> train_split0N.csv / test_split0N.csv and classInd.txt, for each split N
whose lists are in --split_root (UCF101 and HMDB51 have 1-3; a dataset in their format may have fewer).

    python ProcessData/write_csv.py --dataset ucf101 --frame_root UCF101/frames --split_root UCF101/ucfTrainTestlist

Each row: <frame folder>,<number of frames>,<0-based class index from the split files>.
"""
import argparse
import csv
import os
import sys
from pathlib import Path

from ProcessData.splits import FORMATS, SplitError

REPO_ROOT = Path(__file__).resolve().parents[1]


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


def index_split(videos, frame_root: Path) -> tuple[list[tuple[str, int, int]], list[str]]:
    """-> CSV rows of the videos that have frames, and the names of those that have none."""
    rows, missing = [], []
    for video in videos:
        folder = frame_root / video.class_name / video.video
        frames = count_frames(folder)
        if frames:
            rows.append((str(folder), frames, video.label))
        else:
            missing.append(f"{video.class_name}/{video.video}")
    return rows, missing


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Write the CSV index of every split whose lists are given")
    parser.add_argument("--dataset", required=True, choices=sorted(FORMATS), help="format of the split lists")
    parser.add_argument("--frame_root", required=True, type=Path, help="output of extract_frame.py")
    parser.add_argument("--split_root", required=True, type=Path,
                        help="ucfTrainTestlist/ (ucf101) or testTrainMulti_7030_splits/ (hmdb51)")
    parser.add_argument("--csv_root", type=Path, default=None, help="default: ProcessData/data/<dataset>")
    parser.add_argument("--strict", action="store_true", help="fail when a listed video has no frames")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    csv_root = args.csv_root or REPO_ROOT / "ProcessData" / "data" / args.dataset
    if not args.frame_root.is_dir():
        sys.exit(f"error: {args.frame_root}: frame folder not found; run ProcessData/extract_frame.py first")
    split_format = FORMATS[args.dataset]
    frame_root = args.frame_root.resolve()
    try:
        classes = split_format.classes(args.split_root)
        splits = split_format.split_numbers(args.split_root)
        if not splits:
            raise SplitError(f"{args.split_root}: no split lists found; --split_root must hold the official lists")
        tables = {(stage, split): index_split(split_format.videos(args.split_root, split, stage == "train"),
                                              frame_root)
                  for split in splits for stage in ("train", "test")}
    except SplitError as error:
        sys.exit(f"error: {error}")
    missing = sorted({name for _, absent in tables.values() for name in absent})
    if missing and args.strict:
        sys.exit(f"error: {len(missing)} listed videos have no frames under {frame_root} (first: {missing[0]}); "
                 f"extract them or drop --strict")
    csv_root.mkdir(parents=True, exist_ok=True)
    (csv_root / "classInd.txt").write_text("".join(f"{i} {name}\n" for i, name in enumerate(classes, 1)))
    for (stage, split), (rows, absent) in tables.items():
        write_split_csv(rows, csv_root / f"{stage}_split{split:02d}.csv")
        absent_note = f", {len(absent)} without frames" if absent else ""
        print(f"{stage}_split{split:02d}.csv: {len(rows)} videos{absent_note}")
    unlisted = sorted({1, 2, 3} - set(splits))
    if unlisted:
        print(f"no lists for split {', '.join(map(str, unlisted))} in {args.split_root}: not indexed")
    if missing:
        print(f"{len(missing)} listed videos have no frame folder under {frame_root} and were left out:")
        for name in missing[:20]:
            print(f"  {name}")
        if len(missing) > 20:
            print(f"  ... and {len(missing) - 20} more")
    print(f"wrote {csv_root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
