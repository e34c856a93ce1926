"""The demo dataset generator: videos rendered in several processes are the files one process writes."""
from pathlib import Path

import numpy as np

from ProcessData.make_demo import CLASSES, camera_video, make_demo, write_avi


def files(root: Path) -> dict[Path, bytes]:
    return {path.relative_to(root): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_videos_rendered_by_several_processes_are_one_generators_videos_in_order(tmp_path):
    """Each process gets the generator's state at its video's turn, so the files are byte for byte those of one
    generator drawing video after video, in class, group and clip order."""
    for workers in (1, 2):
        make_demo(tmp_path / f"workers{workers}", groups=3, clips=2, frames=8, seed=3, workers=workers)
    one, two = files(tmp_path / "workers1"), files(tmp_path / "workers2")
    assert one == two
    rng = np.random.default_rng(3)
    for class_name in sorted(CLASSES):
        for group in (1, 2, 3):
            for clip in (1, 2):
                write_avi(tmp_path / "expected.avi", camera_video(rng, CLASSES[class_name], 8))
                name = Path("videos") / class_name / f"v_{class_name}_g{group:02d}_c{clip:02d}.avi"
                assert two[name] == (tmp_path / "expected.avi").read_bytes(), name
    assert len({content for name, content in two.items() if name.suffix == ".avi"}) == len(CLASSES) * 3 * 2
