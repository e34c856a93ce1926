"""Frame extraction from real video files written with OpenCV."""
import cv2
import numpy as np
import pytest

from ProcessData import extract_frame

NAME = "v_Odd(1)_name!_&_more_g01_c01"


def write_video(path, frames=12, width=160, height=120, fourcc="MJPG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 25, (width, height))
    assert writer.isOpened()
    for index in range(frames):
        writer.write(np.full((height, width, 3), 10 * index, dtype=np.uint8))
    writer.release()


@pytest.fixture
def videos(tmp_path):
    write_video(tmp_path / "videos" / "Class(A)" / f"{NAME}.avi", frames=12)
    write_video(tmp_path / "videos" / "ClassB" / "v_plain_g01_c01.avi", frames=7, width=96, height=128)
    return tmp_path


def run(root, *extra):
    return extract_frame.main(["--video_root", str(root / "videos"), "--frame_root", str(root / "frames"),
                               "--workers", "2", *extra])


def test_every_decoded_frame_is_written_with_short_side_240(videos):
    assert run(videos) == 0
    folder = videos / "frames" / "Class(A)" / NAME
    frames = sorted(folder.iterdir())
    assert [f.name for f in frames] == [f"image_{i:05d}.jpg" for i in range(1, 13)]
    assert cv2.imread(str(frames[0])).shape == (240, 320, 3)
    portrait = sorted((videos / "frames" / "ClassB" / "v_plain_g01_c01").iterdir())
    assert len(portrait) == 7 and cv2.imread(str(portrait[0])).shape == (320, 240, 3)
    assert abs(int(cv2.imread(str(frames[5])).mean()) - 50) <= 3


def test_dim_flag_sets_the_short_side(videos):
    assert run(videos, "--dim", "128") == 0
    first = videos / "frames" / "Class(A)" / NAME / "image_00001.jpg"
    assert cv2.imread(str(first)).shape == (128, 171, 3)


def test_rerun_redoes_only_unfinished_videos(videos, capsys):
    assert run(videos) == 0
    done = videos / "frames" / "Class(A)" / NAME
    marker = done / "image_00001.jpg"
    stamp = marker.stat().st_mtime_ns
    # An interrupted run leaves only a hidden partial folder behind for the other video.
    unfinished = videos / "frames" / "ClassB" / "v_plain_g01_c01"
    unfinished.rename(unfinished.with_name(".v_plain_g01_c01.partial"))
    capsys.readouterr()
    assert run(videos) == 0
    assert "1 already extracted, 1 to do" in capsys.readouterr().out
    assert marker.stat().st_mtime_ns == stamp
    assert len(list(unfinished.iterdir())) == 7
    assert not unfinished.with_name(".v_plain_g01_c01.partial").exists()


def test_unreadable_video_is_reported_and_the_rest_extracted(videos, capsys):
    broken = videos / "videos" / "ClassB" / "v_broken_g02_c01.avi"
    broken.write_bytes(b"this is not a video")
    assert run(videos) == 1
    err = capsys.readouterr().err
    assert "v_broken_g02_c01.avi" in err and "1 of 3 videos failed" in err
    assert len(list((videos / "frames" / "Class(A)" / NAME).iterdir())) == 12
    assert not (videos / "frames" / "ClassB" / "v_broken_g02_c01").exists()


def test_missing_video_root_is_one_clear_line(tmp_path):
    with pytest.raises(SystemExit, match="video folder not found"):
        extract_frame.main(["--video_root", str(tmp_path / "nope"), "--frame_root", str(tmp_path / "f")])


def test_mp4_videos_with_ext_flag(tmp_path):
    write_video(tmp_path / "videos" / "Walk" / "v_walk_g01_c01.mp4", frames=9, width=640, height=360, fourcc="mp4v")
    assert run(tmp_path, "--ext", "mp4") == 0
    frames = sorted((tmp_path / "frames" / "Walk" / "v_walk_g01_c01").iterdir())
    assert len(frames) == 9 and cv2.imread(str(frames[-1])).shape == (240, 427, 3)
