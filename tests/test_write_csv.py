"""write_csv.py on excerpts of the official split lists, as released (CRLF, trailing spaces, odd names)."""
import csv
import re

import pytest

from ProcessData import write_csv


def make_frames(frame_root, class_name, video, count=3):
    folder = frame_root / class_name / video
    folder.mkdir(parents=True)
    for index in range(1, count + 1):
        (folder / f"image_{index:05d}.jpg").write_bytes(b"\xff\xd8")
    return folder


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def test_ucf101_rows_use_split_labels_and_keep_the_name_case(tmp_path, official_lists):
    frames = tmp_path / "frames"
    make_frames(frames, "ApplyEyeMakeup", "v_ApplyEyeMakeup_g08_c01", 5)
    make_frames(frames, "HandstandPushups", "v_HandStandPushups_g08_c01", 4)
    make_frames(frames, "YoYo", "v_YoYo_g08_c01", 6)
    make_frames(frames, "YoYo", "v_YoYo_g15_c01", 7)
    make_frames(frames, "ApplyEyeMakeup", "v_ApplyEyeMakeup_g01_c01", 2)
    out = tmp_path / "csv"
    assert write_csv.main(["--dataset", "ucf101", "--frame_root", str(frames),
                           "--split_root", str(official_lists["ucfTrainTestlist"]), "--csv_root", str(out)]) == 0
    rows = read_rows(out / "train_split01.csv")
    assert [(r[0].split("/")[-1], r[1], r[2]) for r in rows] == [
        ("v_ApplyEyeMakeup_g08_c01", "5", "0"), ("v_HandStandPushups_g08_c01", "4", "36"),
        ("v_YoYo_g08_c01", "6", "100"), ("v_YoYo_g15_c01", "7", "100")]
    assert rows[1][0] == str((frames / "HandstandPushups" / "v_HandStandPushups_g08_c01").resolve())
    test_rows = read_rows(out / "test_split01.csv")
    assert [(r[0].split("/")[-1], r[2]) for r in test_rows] == [("v_ApplyEyeMakeup_g01_c01", "0")]
    class_lines = (out / "classInd.txt").read_text().splitlines()
    assert len(class_lines) == 101 and class_lines[36] == "37 HandstandPushups"
    assert (out / "test_split03.csv").exists()


def test_missing_videos_are_named_and_strict_fails(tmp_path, official_lists, capsys):
    frames = tmp_path / "frames"
    make_frames(frames, "YoYo", "v_YoYo_g08_c01")
    args = ["--dataset", "ucf101", "--frame_root", str(frames), "--split_root",
            str(official_lists["ucfTrainTestlist"]), "--csv_root", str(tmp_path / "csv")]
    assert write_csv.main(args) == 0
    out = capsys.readouterr().out
    assert "HandstandPushups/v_HandStandPushups_g08_c01" in out and "train_split01.csv: 1 videos, 3 left out" in out
    assert "no lists for split" not in out  # all three splits listed
    assert len(read_rows(tmp_path / "csv" / "train_split01.csv")) == 1
    with pytest.raises(SystemExit, match="have no frame folder"):
        write_csv.main(args + ["--strict"])


def test_hmdb51_names_with_special_characters_survive(tmp_path, official_lists):
    frames = tmp_path / "frames"
    train_video = "Trannydude___Brushing_SyntheticHair___OhNOES!__those_fukin_knots!_brush_hair_u_nm_np1_fr_goo_0"
    test_video = "Brushing_Her_Hair__[_NEW_AUDIO_]_UPDATED!!!!_brush_hair_h_cm_np1_fr_goo_0"
    unused_video = "Brushing_Her_Hair__[_NEW_AUDIO_]_UPDATED!!!!_brush_hair_h_cm_np1_le_goo_3"
    semicolon = "Geena_und_die_Radschl_ge___;-)_cartwheel_f_cm_np1_fr_med_2"
    parens = "Beim_Radschlag_Hose_gerissen_(Nick)_xD_cartwheel_f_cm_np1_ri_med_0"
    for class_name, video in (("brush_hair", train_video), ("brush_hair", test_video),
                              ("brush_hair", unused_video), ("cartwheel", semicolon), ("cartwheel", parens)):
        make_frames(frames, class_name, video)
    out = tmp_path / "csv"
    assert write_csv.main(["--dataset", "hmdb51", "--frame_root", str(frames), "--split_root",
                           str(official_lists["testTrainMulti_7030_splits"]), "--csv_root", str(out)]) == 0
    train = {row[0].split("/")[-1]: row[2] for row in read_rows(out / "train_split01.csv")}
    test = {row[0].split("/")[-1]: row[2] for row in read_rows(out / "test_split01.csv")}
    assert train == {train_video: "0", semicolon: "1"}
    assert test == {test_video: "0", parens: "1"}
    assert (out / "classInd.txt").read_text() == "1 brush_hair\n2 cartwheel\n"


def test_malformed_split_line_names_file_and_line(tmp_path, official_lists):
    lists = official_lists["ucfTrainTestlist"]
    with open(lists / "trainlist02.txt", "ab") as handle:
        handle.write(b"NoSlashHere.avi 3\r\n")
    (tmp_path / "frames").mkdir()
    with pytest.raises(SystemExit, match=r"trainlist02.txt:5"):
        write_csv.main(["--dataset", "ucf101", "--frame_root", str(tmp_path / "frames"), "--split_root", str(lists),
                        "--csv_root", str(tmp_path / "csv")])


def test_a_dataset_with_the_first_splits_lists_only_gets_that_splits_csvs(tmp_path, official_lists, capsys):
    frames = tmp_path / "frames"
    make_frames(frames, "YoYo", "v_YoYo_g08_c01")
    make_frames(frames, "brush_hair", "Brushing_Her_Hair__[_NEW_AUDIO_]_UPDATED!!!!_brush_hair_h_cm_np1_fr_goo_0")
    for split in (2, 3):
        (official_lists["ucfTrainTestlist"] / f"trainlist0{split}.txt").unlink()
        (official_lists["ucfTrainTestlist"] / f"testlist0{split}.txt").unlink()
        for lists in official_lists["testTrainMulti_7030_splits"].glob(f"*_test_split{split}.txt"):
            lists.unlink()
    for dataset, lists in (("ucf101", "ucfTrainTestlist"), ("hmdb51", "testTrainMulti_7030_splits")):
        out = tmp_path / dataset
        assert write_csv.main(["--dataset", dataset, "--frame_root", str(frames), "--split_root",
                               str(official_lists[lists]), "--csv_root", str(out)]) == 0
        assert sorted(path.name for path in out.glob("*.csv")) == ["test_split01.csv", "train_split01.csv"]
        assert (out / "classInd.txt").is_file()
        assert f"no lists for split 2, 3 in {official_lists[lists]}: not indexed" in capsys.readouterr().out
    assert len(read_rows(tmp_path / "ucf101" / "train_split01.csv")) == 1
    assert len(read_rows(tmp_path / "hmdb51" / "test_split01.csv")) == 1


def test_split_lists_without_a_partner_or_without_any_split_name_the_folder(tmp_path, official_lists):
    lists = official_lists["ucfTrainTestlist"]
    (tmp_path / "frames").mkdir()
    args = ["--dataset", "ucf101", "--frame_root", str(tmp_path / "frames"), "--split_root", str(lists),
            "--csv_root", str(tmp_path / "csv")]
    (lists / "testlist03.txt").unlink()
    with pytest.raises(SystemExit, match=r"testlist03.txt: split list not found"):
        write_csv.main(args)
    for path in lists.glob("*list0*.txt"):
        path.unlink()
    with pytest.raises(SystemExit, match=f"{re.escape(str(lists))}: no split lists found"):
        write_csv.main(args)
    assert not (tmp_path / "csv").exists()
