"""Readers for the official split lists (docs/method.md, "Data formats"), as released: CRLF endings, trailing spaces and all."""
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


def _lines(path: Path) -> list[tuple[int, str]]:
    if not path.is_file():
        raise SplitError(f"{path}: split list not found; --split_root must hold the official lists")
    return [(number, line.strip()) for number, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]


def ucf101_classes(split_root: Path) -> list[str]:
    path = split_root / "classInd.txt"
    classes = {}
    for number, line in _lines(path):
        parts = line.split()
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


@dataclass(frozen=True)
class SplitFormat:
    classes: Callable[[Path], list[str]]
    split_numbers: Callable[[Path], list[int]]
    videos: Callable[[Path, int, bool], list[ListedVideo]]


FORMATS = {"ucf101": SplitFormat(ucf101_classes, ucf101_split_numbers, ucf101_split),
           "hmdb51": SplitFormat(hmdb51_classes, hmdb51_split_numbers, hmdb51_split)}
