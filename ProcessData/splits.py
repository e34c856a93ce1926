"""Readers for the official split lists (DESIGN.md §5), as released: CRLF endings, trailing spaces and all."""
from dataclasses import dataclass
from pathlib import Path


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


READERS = {"ucf101": (ucf101_classes, ucf101_split), "hmdb51": (hmdb51_classes, hmdb51_split)}
