"""The demo dataset generator: videos rendered in several processes are the files one process writes; --photos
films the same camera motions over photographs."""
from pathlib import Path

import cv2
import numpy as np
import pytest

from ProcessData.make_demo import CLASSES, PhotoCanvases, camera_video, main, make_demo, write_video_file


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
                write_video_file(tmp_path / "expected.avi", camera_video(rng, CLASSES[class_name], 8))
                name = Path("videos") / class_name / f"v_{class_name}_g{group:02d}_c{clip:02d}.avi"
                assert two[name] == (tmp_path / "expected.avi").read_bytes(), name
    assert len({content for name, content in two.items() if name.suffix == ".avi"}) == len(CLASSES) * 3 * 2


def first_frame_color(path: Path) -> np.ndarray:
    capture = cv2.VideoCapture(str(path))
    ok, frame = capture.read()
    capture.release()
    assert ok, path
    return frame.reshape(-1, 3).mean(axis=0)


def test_photo_canvases_film_the_photos_in_any_number_of_processes(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    red, blue = (0, 0, 200), (200, 0, 0)  # BGR
    cv2.imwrite(str(photos / "red.png"), np.full((300, 451, 3), red, np.uint8))
    cv2.imwrite(str(photos / "blue.jpg"), np.full((512, 512, 3), blue, np.uint8))
    (photos / "notes.txt").write_text("not a photo")
    for workers in (1, 2):
        make_demo(tmp_path / f"workers{workers}", groups=3, clips=2, frames=8, seed=3, workers=workers,
                  canvas=PhotoCanvases(photos))
    one, two = files(tmp_path / "workers1"), files(tmp_path / "workers2")
    assert one == two
    colors = [first_frame_color(tmp_path / "workers1" / name) for name in one if name.suffix == ".avi"]
    nearest = [min((red, blue), key=lambda photo: np.abs(color - photo).max()) for color in colors]
    assert all(np.abs(color - photo).max() < 4 for color, photo in zip(colors, nearest))
    assert {red, blue} == set(nearest)


def test_a_bad_photos_folder_is_one_line_naming_it_before_anything_is_written(tmp_path):
    out = tmp_path / "demo"
    with pytest.raises(SystemExit, match="missing: --photos folder not found"):
        main(["--out", str(out), "--photos", str(tmp_path / "missing")])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit, match="empty: no .jpg, .jpeg or .png photos"):
        main(["--out", str(out), "--photos", str(empty)])
    cv2.imwrite(str(empty / "good.jpg"), np.zeros((240, 320, 3), np.uint8))
    (empty / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(SystemExit, match="broken.jpg: OpenCV cannot read this image"):
        main(["--out", str(out), "--photos", str(empty)])
    assert not out.exists()
