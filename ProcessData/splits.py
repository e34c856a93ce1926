"""Readers for the official split lists (docs/method.md, "Data formats"), as released: CRLF endings, trailing spaces and all.

UCF101 and HMDB51 have three splits; Kinetics (the annotation CSVs of 400, 600 and 700) and plain `<path> <label>`
lists have one, whose validation set is indexed as its test split.
"""
import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


class SplitError(Exception):
    """A split list that does not have the official format; the message names the file and line."""


@dataclass(frozen=True)
class ListedVideo:
    class_name: str
    video: str  # file name without extension
    label: int  # 0-based
    alias: str = ""  # another name the file may have on disk (Kinetics: the YouTube id alone)
    path: str = ""  # the file's path relative to the video root, when the list gives it


def _lines(path: Path) -> list[tuple[int, str]]:
    if not path.is_file():
        raise SplitError(f"{path}: split list not found; --split_root must hold the official lists")
    return [(number, line.strip()) for number, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]


def ucf101_classes(split_root: Path) -> list[str]:
    path = split_root / "classInd.txt"
    classes = {}
    for number, line in _lines(path):
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise SplitError(f"{path}:{number}: expected '<index> <class>', got {line!r}")
        classes[int(parts[0])] = parts[1]
    return [classes[index] for index in sorted(classes)]


def numbers_in_names(split_root: Path, pattern: str) -> list[int]:
    """The split numbers N of the files in `split_root` whose whole name matches `pattern` (N its one group)."""
    return sorted({int(match[1]) for path in split_root.glob("*.txt") if (match := re.fullmatch(pattern, path.name))})


def ucf101_split_numbers(split_root: Path) -> list[int]:
    """Splits with a trainlist0N.txt or a testlist0N.txt: UCF101 has 1-3, a dataset in its format may have fewer."""
    return numbers_in_names(split_root, r"(?:train|test)list(\d+)\.txt")


def ucf101_split(split_root: Path, split: int, train: bool) -> list[ListedVideo]:
    """trainlist0N.txt ('Class/v_..._gNN_cNN.avi 37') or testlist0N.txt (path only)."""
    classes = ucf101_classes(split_root)
    index_of = {name: index for index, name in enumerate(classes)}
    path = split_root / f"{'trainlist' if train else 'testlist'}{split:02d}.txt"
    videos = []
    for number, line in _lines(path):
        parts = line.split()
        relative = parts[0]
        if "/" not in relative or len(parts) > 2:
            raise SplitError(f"{path}:{number}: expected '<class>/<video file>[ <label>]', got {line!r}")
        class_name, file_name = relative.split("/", 1)
        if class_name not in index_of:
            raise SplitError(f"{path}:{number}: class {class_name!r} is not in classInd.txt")
        label = index_of[class_name]
        if len(parts) == 2 and int(parts[1]) - 1 != label:
            raise SplitError(f"{path}:{number}: label {parts[1]} disagrees with classInd.txt for {class_name}")
        videos.append(ListedVideo(class_name, Path(file_name).stem, label))
    return videos


HMDB_SUFFIX = "_test_split"


def hmdb51_classes(split_root: Path) -> list[str]:
    names = sorted({path.name[:path.name.rindex(HMDB_SUFFIX)] for path in split_root.glob(f"*{HMDB_SUFFIX}*.txt")})
    if not names:
        raise SplitError(f"{split_root}: no <class>_test_split<N>.txt files; --split_root must be "
                         f"testTrainMulti_7030_splits")
    return names


def hmdb51_split_numbers(split_root: Path) -> list[int]:
    """Splits with a <class>_test_split<N>.txt; each class must then have one."""
    return numbers_in_names(split_root, rf".+{HMDB_SUFFIX}(\d+)\.txt")


def hmdb51_split(split_root: Path, split: int, train: bool) -> list[ListedVideo]:
    """<class>_test_split<N>.txt lines '<video>.avi <0|1|2> ': 1 train, 2 test, 0 unused."""
    wanted = "1" if train else "2"
    videos = []
    for label, class_name in enumerate(hmdb51_classes(split_root)):
        path = split_root / f"{class_name}{HMDB_SUFFIX}{split}.txt"
        for number, line in _lines(path):
            name, _, tag = line.rpartition(" ")
            if tag not in ("0", "1", "2") or not name:
                raise SplitError(f"{path}:{number}: expected '<video>.avi <0|1|2>', got {line!r}")
            if tag == wanted:
                videos.append(ListedVideo(class_name, Path(name).stem, label))
    return videos


KINETICS_FILES = {True: ("train.csv",), False: ("validate.csv", "val.csv")}
KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end")


def kinetics_file(split_root: Path, train: bool) -> Path:
    for name in KINETICS_FILES[train]:
        if (split_root / name).is_file():
            return split_root / name
    raise SplitError(f"{split_root}: no {' or '.join(KINETICS_FILES[train])}; --split_root must hold Kinetics' "
                     f"annotation CSVs")


def kinetics_rows(path: Path) -> list[tuple[int, dict]]:
    with open(path, newline="", encoding="utf-8-sig") as handle:  # a spreadsheet's save may start with a BOM
        reader = csv.DictReader(handle)
        missing = [column for column in KINETICS_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise SplitError(f"{path}: no column {', '.join(missing)}; expected Kinetics' header "
                             f"'label,youtube_id,time_start,time_end,split'")
        return list(enumerate(reader, 2))


def kinetics_classes(split_root: Path) -> list[str]:
    """The training annotations' labels, sorted: the class order of the field's Kinetics label maps."""
    return sorted({row["label"].strip() for _, row in kinetics_rows(kinetics_file(split_root, True))})


def kinetics_split(split_root: Path, split: int, train: bool) -> list[ListedVideo]:
    """train.csv or validate.csv rows; a file is <youtube_id>_<start:06d>_<end:06d>.<ext> or <youtube_id>.<ext>."""
    index_of = {name: index for index, name in enumerate(kinetics_classes(split_root))}
    path = kinetics_file(split_root, train)
    videos = []
    for number, row in kinetics_rows(path):
        label = row["label"].strip()
        if label not in index_of:
            raise SplitError(f"{path}:{number}: label {label!r} is not among train.csv's")
        try:
            start, end = int(float(row["time_start"])), int(float(row["time_end"]))
        except (TypeError, ValueError):
            raise SplitError(f"{path}:{number}: time_start and time_end must be seconds, got "
                             f"{row['time_start']!r}, {row['time_end']!r}") from None
        youtube_id = row["youtube_id"].strip()
        videos.append(ListedVideo(label, f"{youtube_id}_{start:06d}_{end:06d}", index_of[label], alias=youtube_id))
    return videos


def one_split(split_root: Path) -> list[int]:
    return [1]


LIST_FILES = {True: ("train.txt", "train.csv"), False: ("val.txt", "val.csv", "test.txt", "test.csv")}


def list_file(split_root: Path, train: bool) -> Path:
    for name in LIST_FILES[train]:
        if (split_root / name).is_file():
            return split_root / name
    raise SplitError(f"{split_root}: no {' or '.join(LIST_FILES[train])}; --split_root must hold '<path> <label>' "
                     f"lists")


def list_entries(path: Path) -> list[tuple[str, int]]:
    """'<path> <0-based label>' per line (space or comma before the label; the path may hold spaces)."""
    entries = []
    for number, line in _lines(path):
        match = re.fullmatch(r"(.+?)[\s,]+(\d+)", line)
        if not match:
            raise SplitError(f"{path}:{number}: expected '<video path> <0-based label>', got {line!r}")
        entries.append((match[1], int(match[2])))
    return entries


def list_classes(split_root: Path) -> list[str]:
    """classInd.txt beside the lists ('<1-based index> <name>'), else the labels themselves: '0', '1', ..."""
    if (split_root / "classInd.txt").is_file():
        return ucf101_classes(split_root)
    labels = [label for train in (True, False) for _, label in list_entries(list_file(split_root, train))]
    return [str(label) for label in range(max(labels) + 1)]


def list_split(split_root: Path, split: int, train: bool) -> list[ListedVideo]:
    classes = list_classes(split_root)
    path = list_file(split_root, train)
    videos = []
    for relative, label in list_entries(path):
        if label >= len(classes):
            raise SplitError(f"{path}: label {label} of {relative} is outside the {len(classes)} classes of "
                             f"{split_root / 'classInd.txt'}")
        videos.append(ListedVideo(classes[label], Path(relative).stem, label, path=relative))
    return videos


@dataclass(frozen=True)
class SplitFormat:
    classes: Callable[[Path], list[str]]
    split_numbers: Callable[[Path], list[int]]
    videos: Callable[[Path, int, bool], list[ListedVideo]]


KINETICS = SplitFormat(kinetics_classes, one_split, kinetics_split)
FORMATS = {"ucf101": SplitFormat(ucf101_classes, ucf101_split_numbers, ucf101_split),
           "hmdb51": SplitFormat(hmdb51_classes, hmdb51_split_numbers, hmdb51_split),
           "k400": KINETICS, "k600": KINETICS, "k700": KINETICS,
           "list": SplitFormat(list_classes, one_split, list_split)}
