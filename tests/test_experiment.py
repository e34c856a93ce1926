"""The pretrained-vs-random experiment: its table, and the whole chain on the smoke preset."""
import json
import re
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch

from CPCTrans.data import read_index
from Evaluate import experiment
from ProcessData import make_demo


def test_table_gives_mean_and_sample_std_in_percent_per_row():
    results = {("full", "random"): {"finetune": [0.2, 0.4], "linear probe": [0.1, 0.1], "feature probe": [0.2, 0.2],
                                    "retrieval": [0.3, 0.5]},
               ("causal", "pretrained"): {"finetune": [0.5, 0.7], "linear probe": [0.6, 0.6],
                                          "feature probe": [0.4, 0.5], "retrieval": [0.2, 0.2],
                                          "pretext top1": [0.3, 0.34],
                                          "pretext top1, future reversed": [0.1, 0.12],
                                          "targets across steps cos": [0.99, 0.95]}}
    lines = experiment.markdown_table(results, [0, 1]).splitlines()
    assert lines[0] == ("| attention | initialisation | finetune top1 | linear probe top1 | feature probe top1 | "
                        "retrieval R@1 | pretext top1 | pretext top1, future reversed | targets across steps cos |")
    assert lines[2] == "| full | random | 30.0 ± 14.1 | 10.0 ± 0.0 | 20.0 ± 0.0 | 40.0 ± 14.1 | – | – | – |"
    assert lines[3] == ("| causal | pretrained | 60.0 ± 14.1 | 60.0 ± 0.0 | 45.0 ± 7.1 | 20.0 ± 0.0 | 32.0 ± 2.8 "
                        "| 11.0 ± 1.4 | 0.97 ± 0.03 |")


def test_side_by_side_jobs_come_from_the_preset_unless_given_and_never_outnumber_the_runs():
    gpu, cpu = experiment.PRESETS["gpu"], experiment.PRESETS["cpu"]
    assert experiment.parse_args(["--preset", "gpu"]).jobs is None
    assert experiment.side_by_side_jobs(None, gpu, units=6) == 2  # the default 3 seeds x 2 attentions
    assert experiment.side_by_side_jobs(4, cpu, units=3) == 3
    assert experiment.side_by_side_jobs(None, gpu, units=1) == 1  # one run stays in the experiment's process
    assert experiment.side_by_side_jobs(None, cpu, units=6) == 1  # two cores: one run at a time
    assert experiment.side_by_side_jobs(2, cpu, units=6) == 2
    assert experiment.side_by_side_jobs(1, gpu, units=6) == 1


def test_runs_side_by_side_share_the_presets_loader_workers():
    gpu, cpu = experiment.PRESETS["gpu"], experiment.PRESETS["cpu"]
    assert experiment.share_of_workers(gpu, 1) == gpu
    assert experiment.share_of_workers(gpu, 2) == replace(gpu, workers=gpu.workers // 2)
    assert experiment.share_of_workers(gpu, 3 * gpu.workers).workers == 1
    assert experiment.share_of_workers(cpu, 2).workers == 0  # loading in the main process stays there


def test_gpu_preset_without_a_gpu_stops_in_one_line_before_making_any_data(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as stopped:
        experiment.main(["--preset", "gpu", "--out", str(tmp_path / "out")])
    assert str(stopped.value) == ("error: --preset gpu needs a CUDA device and none is visible; --preset cpu runs on "
                                  "the CPU")
    assert not (tmp_path / "out").exists()


def test_the_demo_over_photos_is_made_once_and_never_mixed_with_one_over_other_canvases(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    green = (0, 180, 0)  # BGR
    cv2.imwrite(str(photos / "green.png"), np.full((300, 400, 3), green, np.uint8))
    data, smoke = tmp_path / "data", experiment.PRESETS["smoke"]
    with pytest.raises(SystemExit, match="missing: --photos folder not found"):
        experiment.main(["--preset", "smoke", "--out", str(tmp_path / "out"), "--photos", str(tmp_path / "missing")])
    assert not (tmp_path / "out").exists()
    csv_root = experiment.prepare_dataset(data, smoke, photos)
    frames = sorted(data.glob("frames/*/*/image_00001.jpg"))
    assert len(frames) == sum(len(read_index(csv_root / f"{part}_split01.csv")) for part in ("train", "test"))
    for frame in frames:
        assert np.abs(cv2.imread(str(frame)).reshape(-1, 3).mean(axis=0) - green).max() < 4, frame
    written = {path: path.stat().st_mtime_ns for path in data.rglob("*.avi")}
    assert experiment.prepare_dataset(data, smoke, photos) == csv_root
    assert {path: path.stat().st_mtime_ns for path in data.rglob("*.avi")} == written
    with pytest.raises(make_demo.DemoError, match="filmed over .*photos, not textured canvases; give another --out"):
        experiment.prepare_dataset(data, smoke)
    experiment.prepare_dataset(tmp_path / "textured", smoke)
    with pytest.raises(make_demo.DemoError, match="filmed over textured canvases, not .*photos"):
        experiment.prepare_dataset(tmp_path / "textured", smoke, photos)


def test_smoke_preset_runs_every_stage_and_reruns_reuse_the_finished_ones(tmp_path, capfd):
    argv = ["--preset", "smoke", "--seeds", "0", "--attn", "full", "--out", str(tmp_path)]
    assert experiment.main(argv) == 0
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["jobs"] == 1
    rows = {(row["attn"], row["init"]): row for row in report["results"]}
    assert set(rows) == {("full", "random"), ("full", "pretrained")}
    for row in rows.values():
        for metric in ("finetune", "linear probe", "feature probe", "retrieval"):
            assert len(row[metric]) == 1 and 0.0 <= row[metric][0] <= 1.0
    # The pretraining's last validation, read from its checkpoint: pretext top-1 (as is and with the future
    # reversed) and the targets' similarity.
    pretrained = rows[("full", "pretrained")]
    for name in ("pretext top1", "pretext top1, future reversed"):
        assert len(pretrained[name]) == 1 and 0.0 <= pretrained[name][0] <= 1.0
    assert len(pretrained["targets across steps cos"]) == 1 and -1.0 <= pretrained["targets across steps cos"][0] <= 1
    assert "pretext top1" not in rows[("full", "random")]
    assert "| full | pretrained |" in (tmp_path / "results.md").read_text()
    # Pretrained with per-clip color unless told otherwise, and the pretraining itself recorded it.
    assert report["color_aug"] == "clip"
    assert report["photos"] is None and "textured canvases" in (tmp_path / "results.md").read_text()
    pretraining, = tmp_path.glob("logs/pretrain/**/epoch1.pth.tar")
    assert torch.load(pretraining, weights_only=True)["args"]["color_aug"] == "clip"
    assert set(report["minutes_by_stage"]) == {"pretraining", "finetuning and test", "linear probe and test",
                                               "retrieval"}
    assert 0 < sum(report["minutes_by_stage"].values()) <= report["minutes"]
    checkpoints = sorted(tmp_path.glob("logs/**/epoch1.pth.tar"))
    assert len(checkpoints) == 5  # one pretraining, two finetunings, two linear probes
    written = {path: path.stat().st_mtime_ns for path in checkpoints}

    assert experiment.main(argv) == 0
    assert json.loads((tmp_path / "results.json").read_text())["results"] == report["results"]
    assert {path: path.stat().st_mtime_ns for path in checkpoints} == written

    # Retrieval results written before the feature probe existed: retrieved again, nothing trained again.
    retrievals = sorted(tmp_path.glob("logs/**/*.retrieval.json"))
    assert len(retrievals) == 2
    for path in retrievals:
        path.write_text(json.dumps({key: value for key, value in json.loads(path.read_text()).items()
                                    if key != "probe_top1"}))
    assert experiment.main(argv) == 0
    assert json.loads((tmp_path / "results.json").read_text())["results"] == report["results"]
    assert {path: path.stat().st_mtime_ns for path in checkpoints} == written

    # The reference's per-frame color in the same folder: pretrained anew, the random-init runs reused.
    assert experiment.main([*argv, "--color_aug", "frame"]) == 0
    assert len(list(tmp_path.glob("logs/**/epoch1.pth.tar"))) == 8  # a pretraining, a finetuning, a probe
    assert {path: path.stat().st_mtime_ns for path in checkpoints} == written
    frame_report = json.loads((tmp_path / "results.json").read_text())
    assert frame_report["color_aug"] == "frame"
    assert [row for row in frame_report["results"] if row["init"] == "random"] == \
        [row for row in report["results"] if row["init"] == "random"]

    # A longer pretraining than the preset's: its own run, which does not continue the 1-epoch one.
    assert experiment.main([*argv, "--pretrain_epochs", "2"]) == 0
    assert len(list(tmp_path.glob("logs/pretrain/**/epoch2.pth.tar"))) == 1
    assert {path: path.stat().st_mtime_ns for path in checkpoints} == written
    assert json.loads((tmp_path / "results.json").read_text())["settings"]["pretrain_epochs"] == 2

    # Seeds side by side in processes of their own: seed 0 found finished and reused as it is, seed 1 run anew;
    # each process's console output in a file of its own but for a line per finished stage, and the experiment's
    # says when each is done.
    capfd.readouterr()
    assert experiment.main([*argv, "--seeds", "0", "1", "--jobs", "2"]) == 0
    console = capfd.readouterr().out
    assert f"2 runs, 2 at a time, each in a process of its own; their console output goes to {tmp_path / 'logs'}" \
        in console
    assert re.search(r"^full seed 0 done after \d+\.\d minutes$", console, re.MULTILINE)
    assert re.search(r"^full seed 1 done after \d+\.\d minutes$", console, re.MULTILINE)
    for seed in (0, 1):
        stages = re.findall(rf"^full seed {seed}: (.+) took \d+\.\d minutes$", console, re.MULTILINE)
        assert stages == ["pretraining", *(f"{stage} from {weights}"
                                           for weights in ("random weights", "the pretraining")
                                           for stage in ("finetuning and test", "linear probe and test", "retrieval"))]
    assert "pretraining on cpu" not in console
    assert {path: path.stat().st_mtime_ns for path in checkpoints} == written
    both = json.loads((tmp_path / "results.json").read_text())
    assert both["jobs"] == 2
    assert [{key: value[:1] if isinstance(value, list) else value for key, value in row.items()}
            for row in both["results"]] == report["results"]
    assert all(len(value) == 2 for row in both["results"] for value in row.values() if isinstance(value, list))
    assert len(list(tmp_path.glob("logs/pretrain/**/epoch1.pth.tar"))) == 3  # seed 0 twice (colors), seed 1
    assert "pretraining on cpu" in (tmp_path / "logs" / "full_seed1.txt").read_text()
    assert "pretraining on cpu" not in (tmp_path / "logs" / "full_seed0.txt").read_text()


def test_the_comparison_runs_on_a_dataset_of_ones_own_and_makes_no_demo_videos(demo_dataset, tmp_path):
    csv_root = demo_dataset / "csv"
    with pytest.raises(SystemExit, match="--csv_root gives the data and --photos films the demo's; give one of them"):
        experiment.main(["--preset", "smoke", "--csv_root", str(csv_root), "--photos", str(tmp_path)])
    out = tmp_path / "out"
    assert experiment.main(["--preset", "smoke", "--seeds", "0", "--attn", "full", "--csv_root", str(csv_root),
                            "--out", str(out)]) == 0
    assert sorted(path.name for path in out.iterdir()) == ["logs", "results.json", "results.md"]
    report = json.loads((out / "results.json").read_text())
    assert report["csv_root"] == str(csv_root.resolve())
    assert {(row["attn"], row["init"]) for row in report["results"]} == {("full", "random"), ("full", "pretrained")}
    assert f"dataset {csv_root.resolve()}" in (out / "results.md").read_text()
    # Every stage ran on the given CSVs, named after their folder: the pretraining, and the four finetunings and
    # probes, each tested on the test split's videos.
    runs = [path.name for path in out.glob("logs/pretrain/log_*/*")]
    assert len(runs) == 1 and runs[0].startswith("csv-32_")
    tested = [json.loads(path.read_text()) for path in out.glob("logs/finetune/**/*.test.json")]
    videos = len(read_index(csv_root / "test_split01.csv"))
    assert len(tested) == 4
    assert {(result["dataset"], result["videos_tested"] + result["videos_skipped"]) for result in tested} == \
        {("csv", videos)}


def test_compile_mode_reaches_every_training_stage(tmp_path):
    """--compile MODE is handed to pretraining, finetuning and retrieval, parsed by their own command lines."""
    args = experiment.parse_args(["--preset", "gpu", "--compile", "reduce-overhead"])
    runner = experiment.Runner(experiment.PRESETS["gpu"], tmp_path, tmp_path, "none", "frame", args.compile)
    assert experiment.pretraining.parse_args([*runner.common, "--epochs", "1"]).compile == "reduce-overhead"
    assert experiment.evaluation.parse_args([*runner.common, "--retrieval", "random"]).compile == "reduce-overhead"
    assert experiment.parse_args(["--preset", "gpu", "--compile"]).compile == "default"
    assert "--compile" not in experiment.Runner(experiment.PRESETS["gpu"], tmp_path, tmp_path, "none", "frame").common
