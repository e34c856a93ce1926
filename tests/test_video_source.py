"""Kinetics-format indexes and training straight from video files, on real .mp4/.avi files written by OpenCV."""
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from CPCTrans.data import (ClipDataset, DataError, clip_indices, clip_start_range, decode_frames, frame_path,
                           read_class_names, read_index)
from CPCTrans.video import clip_frames, read_all_frames, resize_short_side
from ProcessData import check_videos, extract_frame, make_demo, write_csv
from test_resume import assert_same_weights, final_weights, pretrain

FRAMES = 20
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def kinetics_demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("k400")
    demo = make_demo.make_kinetics_demo(root, groups=3, clips=1, frames=FRAMES, seed=0)
    return root, demo


def rows_of(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def index_kinetics(root: Path, csv_root: Path, *flags: str) -> None:
    assert write_csv.main(["--dataset", "k400", "--split_root", str(root / "annotations"), "--csv_root",
                           str(csv_root), *flags]) == 0


def test_kinetics_index_names_missing_and_corrupt_videos_and_counts_the_rest(kinetics_demo, tmp_path, capsys):
    root, demo = kinetics_demo
    assert b"\r\n" in (root / "annotations" / "train.csv").read_bytes()  # CRLF, as some mirrors ship them
    index_kinetics(root, tmp_path / "csv", "--video_root", str(root / "videos"))
    out = capsys.readouterr().out
    classes = read_class_names(tmp_path / "csv" / "classInd.txt")
    assert classes == ["pan down", "pan sideways", "pan up", "zoom in", "zoom out"]
    left_out = set(demo.missing) | set(demo.corrupt)
    for stage, split in (("train", "train"), ("test", "validate")):
        rows = rows_of(tmp_path / "csv" / f"{stage}_split01.csv")
        listed = [row for row in demo.listed if row[4] == split]
        expected = {f"{row[1]}_{row[2]:06d}_{row[3]:06d}": classes.index(row[0]) for row in listed}
        expected = {name: label for name, label in expected.items() if name not in left_out}
        assert {Path(row[0]).stem: int(row[2]) for row in rows} == expected
        assert all(row[1] == str(FRAMES) and Path(row[0]).is_file() for row in rows)
    for name in demo.missing + demo.corrupt:
        assert name in out
    assert sorted(Path(line).name for line in (tmp_path / "csv" / "missing.txt").read_text().splitlines()) == sorted(
        demo.missing)
    assert demo.corrupt[0] in (tmp_path / "csv" / "unreadable.txt").read_text()


def test_kinetics_flat_layout_named_by_youtube_id_and_extracted_frames_are_found(kinetics_demo, tmp_path):
    root, _ = kinetics_demo
    flat = tmp_path / "flat"
    flat.mkdir()
    for video in (root / "videos").rglob("*.mp4"):
        shutil.copy(video, flat / f"{video.stem[:11]}.mp4")
    index_kinetics(root, tmp_path / "layout_csv", "--video_root", str(root / "videos"))
    by_layout = rows_of(tmp_path / "layout_csv" / "train_split01.csv")
    index_kinetics(root, tmp_path / "flat_csv", "--video_root", str(flat))
    by_id = rows_of(tmp_path / "flat_csv" / "train_split01.csv")
    assert [(Path(row[0]).parent, Path(row[0]).stem, row[1:]) for row in by_id] == [
        (flat, Path(row[0]).stem[:11], row[1:]) for row in by_layout]
    assert extract_frame.main(["--video_root", str(root / "videos"), "--frame_root", str(tmp_path / "frames"),
                               "--ext", "mp4", "--workers", "1"]) == 1  # the corrupt one fails, the others are done
    index_kinetics(root, tmp_path / "frame_csv", "--frame_root", str(tmp_path / "frames"))
    frame_rows = rows_of(tmp_path / "frame_csv" / "train_split01.csv")
    assert [(Path(row[0]).name, row[1:]) for row in frame_rows] == [(Path(row[0]).stem, row[1:]) for row in by_layout]
    assert all(Path(row[0]).parent.parent.name == "train" for row in frame_rows)  # <split>/<class>/<video> kept


def test_plain_path_label_lists_are_indexed(kinetics_demo, tmp_path):
    root, demo = kinetics_demo
    videos = [video for video in sorted((root / "videos" / "train").rglob("*.mp4")) if video.stem not in demo.corrupt]
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "train.txt").write_text(f"{videos[0].relative_to(root / 'videos')} 0\n"
                                     f"{videos[1].relative_to(root / 'videos')},1\r\n")
    (lists / "val.txt").write_text(f"{videos[2].relative_to(root / 'videos')} 2\nnot/there.mp4 1\n")
    assert write_csv.main(["--dataset", "list", "--video_root", str(root / "videos"), "--split_root", str(lists),
                           "--csv_root", str(tmp_path / "csv")]) == 0
    assert [(row[0], row[2]) for row in rows_of(tmp_path / "csv" / "train_split01.csv")] == [
        (str(videos[0]), "0"), (str(videos[1]), "1")]
    assert [row[0] for row in rows_of(tmp_path / "csv" / "test_split01.csv")] == [str(videos[2])]
    assert read_class_names(tmp_path / "csv" / "classInd.txt") == ["0", "1", "2"]
    assert (tmp_path / "csv" / "missing.txt").read_text() == "not/there.mp4\n"


def test_clips_decoded_from_videos_equal_the_extracted_frames(demo_dataset, demo_video_csv):
    """The same items from both sources: the frames differ only by extract_frame.py's JPEG compression."""
    frame_records = read_index(demo_dataset / "csv" / "train_split01.csv")
    video_records = read_index(demo_video_csv / "train_split01.csv")
    assert [Path(r.folder).name for r in frame_records] == [Path(r.folder).stem for r in video_records]
    assert [r.num_frames for r in frame_records] == [r.num_frames for r in video_records]
    from_frames = ClipDataset(frame_records, num_seq=4, ds=3)
    from_videos = ClipDataset(video_records, num_seq=4, ds=3, source="video")
    for item in [(0, 0.0), (1, 0.5), (len(from_frames) - 1, 0.99)]:
        frames, label, _, _ = from_frames[item]
        decoded, decoded_label, _, _ = from_videos[item]
        assert decoded.shape == frames.shape == (4, 3, 240, 320) and decoded.dtype == torch.uint8
        assert decoded_label == label
        difference = (decoded.float() - frames.float()).abs().mean(dim=(1, 2, 3))
        assert difference.max() < 8, difference  # JPEG quality 80 on the demo's fine texture
        # The frames one later: the camera moved, and the tolerance above tells them apart (exact seeking).
        record = frame_records[item[0]]
        start = int(item[1] * clip_start_range(record.num_frames, 4, 3))
        one_later = decode_frames([frame_path(record.folder, i + 1) for i in clip_indices(start, 4, 3)])
        assert (difference < (decoded.float() - one_later.float()).abs().mean(dim=(1, 2, 3))).all()
        # And bit for bit the frames a decode from the first frame gives: seeking lands exactly.
        every_frame = read_all_frames(video_records[item[0]].folder)
        expected = np.stack([resize_short_side(every_frame[i], 240) for i in clip_indices(start, 4, 3)])
        assert torch.equal(decoded.permute(0, 2, 3, 1), torch.from_numpy(expected))


def test_seeking_into_an_mp4_lands_on_every_asked_frame(kinetics_demo):
    """mp4v as OpenCV writes it: a keyframe every 12 frames, so most starts decode forward from an earlier one."""
    root, _ = kinetics_demo
    video = str(next((root / "videos" / "val").rglob("*.mp4")))
    every_frame = read_all_frames(video)
    assert len(every_frame) == FRAMES
    for start in range(FRAMES - 6):
        frames = clip_frames(video, clip_indices(start, 3, 3))
        assert all(np.array_equal(frame, every_frame[i]) for frame, i in zip(frames, clip_indices(start, 3, 3)))


def csv_with_broken_videos(demo_video_csv: Path, tmp_path: Path) -> tuple[Path, list[Path]]:
    """The demo's video CSVs plus two listed videos that cannot be read: a zero-byte file and a cut mp4."""
    csv_root = tmp_path / "csv"
    shutil.copytree(demo_video_csv, csv_root)
    records = read_index(demo_video_csv / "train_split01.csv")
    empty, cut = tmp_path / "empty.avi", tmp_path / "cut.mp4"
    empty.write_bytes(b"")
    make_demo.write_video_file(cut, make_demo.camera_video(np.random.default_rng(0), (0, 1, 0), FRAMES))
    cut.write_bytes(cut.read_bytes()[:cut.stat().st_size // 2])
    with open(csv_root / "train_split01.csv", "a", newline="") as handle:
        csv.writer(handle).writerows([(empty, FRAMES, 0), (cut, FRAMES, 1)])
    assert len(read_index(csv_root / "train_split01.csv")) == len(records) + 2
    return csv_root, [empty, cut]


def test_pretraining_and_finetuning_from_videos_replace_and_count_unreadable_ones(demo_video_csv, demo_dataset,
                                                                                  tmp_path, capsys):
    csv_root, broken = csv_with_broken_videos(demo_video_csv, tmp_path)
    # Two loader processes, forked from this one, which has used OpenCV's threads (the demo was filmed here).
    flags = ["--csv_root", csv_root, "--source", "video", "--batch_size", "4", "--workers", "2"]
    pretrain(demo_dataset, tmp_path / "pretrain", 1, *flags)
    logged = capsys.readouterr()
    for path in broken:
        assert f"replaced an unreadable clip: {path}: cannot open" in logged.out + logged.err
    assert "val loss" in logged.out
    with pytest.raises(SystemExit, match="2 unreadable clips, more than --max_bad_samples 1"):
        pretrain(demo_dataset, tmp_path / "strict", 1, *flags, "--max_bad_samples", 1)
    checkpoint = next((tmp_path / "pretrain").glob("log_tmp/*/model/epoch1.pth.tar"))
    pretrain(demo_dataset, tmp_path / "finetune", 1, *flags, "--pretrain", checkpoint, script="Evaluate/test.py")
    finetuned = next((tmp_path / "finetune").glob("log_tmp/*/model/epoch1.pth.tar"))
    capsys.readouterr()
    pretrain(demo_dataset, tmp_path / "finetune", 1, "--test", finetuned, "--csv_root", demo_video_csv,
             script="Evaluate/test.py")  # --source video comes from the checkpoint
    tested = json.loads(finetuned.with_name(finetuned.name + ".test.json").read_text())
    assert tested["videos_tested"] == 5 and "Acc top1:" in capsys.readouterr().out


def test_a_run_resumed_from_videos_ends_with_the_uninterrupted_weights(demo_video_csv, demo_dataset, tmp_path):
    flags = ["--csv_root", demo_video_csv, "--source", "video"]
    pretrain(demo_dataset, tmp_path / "straight", 2, *flags)
    pretrain(demo_dataset, tmp_path / "resumed", 1, *flags)
    pretrain(demo_dataset, tmp_path / "resumed", 2, *flags, "--resume", "latest")
    assert_same_weights(final_weights(tmp_path / "straight", 2), final_weights(tmp_path / "resumed", 2))


def test_a_csv_of_the_other_source_is_refused_in_one_line(demo_video_csv, demo_dataset, tmp_path):
    with pytest.raises(DataError, match="with --source video use --decode cpu"):
        ClipDataset(read_index(demo_video_csv / "train_split01.csv"), 4, 3, encoded=True, source="video")
    with pytest.raises(SystemExit, match="indexes video files .*; add --source video"):
        pretrain(demo_dataset, tmp_path / "a", 1, "--csv_root", demo_video_csv)
    with pytest.raises(SystemExit, match="indexes frame folders .*; drop --source video"):
        pretrain(demo_dataset, tmp_path / "b", 1, "--source", "video")


def test_check_videos_names_broken_files_and_resumes_from_its_report(demo_dataset, tmp_path, capsys):
    videos = tmp_path / "videos"
    shutil.copytree(demo_dataset / "videos", videos)
    cut = next(videos.rglob("*.avi"))
    cut.write_bytes(cut.read_bytes()[:cut.stat().st_size // 2])  # opens; decodes part of its frames
    (videos / "PanUp" / "empty.avi").write_bytes(b"")
    report = tmp_path / "report.json"
    args = ["--video_root", str(videos), "--ext", "avi", "--workers", "2", "--report", str(report)]
    assert check_videos.main(args) == 0
    out = capsys.readouterr().out
    saved = json.loads(report.read_text())
    assert saved["broken"] == sorted([str(cut.relative_to(videos)), "PanUp/empty.avi"])
    entry = saved["videos"][str(cut.relative_to(videos))]
    assert 0 < entry["frames"] < entry["declared"] == FRAMES and "truncated" in entry["error"]
    assert len(saved["videos"]) == 16 and "2 of 16 videos are broken" in out
    assert check_videos.main(args) == 0
    assert "16 checked before" in capsys.readouterr().out  # nothing decoded again
    (videos / "PanUp" / "empty.avi").unlink()
    shutil.copy(next(path for path in videos.rglob("*.avi") if path != cut), cut)  # repaired
    assert check_videos.main(args) == 0
    assert "1 to check" in capsys.readouterr().out
    assert json.loads(report.read_text())["videos"][str(cut.relative_to(videos))]["error"] == ""


def test_extract_frame_writes_resized_videos_in_the_same_layout(kinetics_demo, tmp_path):
    root, demo = kinetics_demo
    out = tmp_path / "videos_128"
    args = ["--video_root", str(root / "videos"), "--frame_root", str(out), "--ext", "mp4", "--out", "video",
            "--short_side", "128", "--workers", "2"]
    assert extract_frame.main(args) == 1  # the corrupt video is named; the others are written
    written = sorted(out.rglob("*.mp4"))
    originals = sorted(path for path in (root / "videos").rglob("*.mp4") if path.stem not in demo.corrupt)
    assert [path.relative_to(out) for path in written] == [path.relative_to(root / "videos") for path in originals]
    frames = read_all_frames(str(written[0]))
    assert len(frames) == FRAMES and frames[0].shape == (128, 170, 3)  # 170.7 wide, cut to an even width
    assert not list(out.rglob(".*"))  # no partial file left behind


def test_compare_decoders_times_opencv_and_checks_its_seeking(kinetics_demo):
    root, demo = kinetics_demo
    videos = [str(path) for path in sorted((root / "videos").rglob("*.mp4")) if path.stem not in demo.corrupt][:3]
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "compare_decoders.py"), "--videos", *videos,
                             "--clips", "6", "--num_seq", "3"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("| opencv |"))
    clips_per_s, _, exact = [cell.strip() for cell in row.strip("|").split("|")[1:]]
    assert float(clips_per_s) > 0 and exact == "6/6"
