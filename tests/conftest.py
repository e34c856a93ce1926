"""Shared fixtures: a small real dataset made the way a user makes one (videos -> frames -> CSVs)."""
import shutil
from pathlib import Path

import pytest

from ProcessData import extract_frame, make_demo, write_csv
from reference_oracle import load_reference

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory) -> Path:
    """The demo generator's real .avi files, extracted to JPEG folders and indexed into CSVs."""
    root = tmp_path_factory.mktemp("demo")
    make_demo.make_demo(root, groups=3, clips=1, frames=20, seed=0)
    assert extract_frame.main(["--video_root", str(root / "videos"), "--frame_root", str(root / "frames"),
                               "--workers", "2"]) == 0
    assert write_csv.main(["--dataset", "ucf101", "--frame_root", str(root / "frames"),
                           "--split_root", str(root / "ucfTrainTestlist"), "--csv_root", str(root / "csv")]) == 0
    return root


@pytest.fixture(scope="session")
def demo_video_csv(demo_dataset) -> Path:
    """The demo dataset's CSVs indexing its video files themselves (for --source video)."""
    csv_root = demo_dataset / "video_csv"
    assert write_csv.main(["--dataset", "ucf101", "--video_root", str(demo_dataset / "videos"),
                           "--split_root", str(demo_dataset / "ucfTrainTestlist"), "--csv_root", str(csv_root)]) == 0
    return csv_root


@pytest.fixture
def official_lists(tmp_path) -> dict[str, Path]:
    """Excerpts of the official UCF101 and HMDB51 split lists, byte for byte as released."""
    copies = {}
    for name in ("ucfTrainTestlist", "testTrainMulti_7030_splits"):
        copies[name] = tmp_path / name
        shutil.copytree(DATA / name, copies[name])
    return copies


@pytest.fixture
def reference(monkeypatch):
    """The reference implementation's code, for tests marked reference (reference_oracle.py)."""
    return load_reference(monkeypatch)
