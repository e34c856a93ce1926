"""The pretrained-vs-random experiment: its table, and the whole chain on the smoke preset."""
import json
import subprocess
import sys
from pathlib import Path

from Evaluate.experiment import markdown_table

REPO = Path(__file__).resolve().parents[1]


def test_table_gives_mean_and_sample_std_in_percent_per_row():
    results = {("full", "random"): {"finetune": [0.2, 0.4], "linear probe": [0.1, 0.1], "retrieval": [0.3, 0.5]},
               ("causal", "pretrained"): {"finetune": [0.5, 0.7], "linear probe": [0.6, 0.6],
                                          "retrieval": [0.2, 0.2]}}
    lines = markdown_table(results, [0, 1]).splitlines()
    assert lines[0] == "| attention | initialisation | finetune top1 | linear probe top1 | retrieval R@1 |"
    assert lines[2] == "| full | random | 30.0 ± 14.1 | 10.0 ± 0.0 | 40.0 ± 14.1 |"
    assert lines[3] == "| causal | pretrained | 60.0 ± 14.1 | 60.0 ± 0.0 | 20.0 ± 0.0 |"


def test_smoke_preset_runs_every_stage_and_reruns_reuse_the_finished_ones(tmp_path):
    command = [sys.executable, str(REPO / "Evaluate/experiment.py"), "--preset", "smoke", "--seeds", "0",
               "--attn", "full", "--out", str(tmp_path)]
    first = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    report = json.loads((tmp_path / "results.json").read_text())
    rows = {(row["attn"], row["init"]): row for row in report["results"]}
    assert set(rows) == {("full", "random"), ("full", "pretrained")}
    for row in rows.values():
        for metric in ("finetune", "linear probe", "retrieval"):
            assert len(row[metric]) == 1 and 0.0 <= row[metric][0] <= 1.0
    assert "| full | pretrained |" in (tmp_path / "results.md").read_text()
    checkpoints = sorted(tmp_path.glob("logs/**/epoch1.pth.tar"))
    assert len(checkpoints) == 5  # one pretraining, two finetunings, two linear probes
    written = {path: path.stat().st_mtime_ns for path in checkpoints}

    second = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert json.loads((tmp_path / "results.json").read_text())["results"] == report["results"]
    assert {path: path.stat().st_mtime_ns for path in checkpoints} == written

    # Another pretraining augmentation in the same folder: pretrained anew, the random-init runs reused.
    third = subprocess.run([*command, "--color_aug", "clip"], capture_output=True, text=True, cwd=tmp_path)
    assert third.returncode == 0, third.stderr[-3000:]
    assert len(list(tmp_path.glob("logs/**/epoch1.pth.tar"))) == 8  # a pretraining, a finetuning, a probe
    assert {path: path.stat().st_mtime_ns for path in checkpoints} == written
    clip_report = json.loads((tmp_path / "results.json").read_text())
    assert clip_report["color_aug"] == "clip"
    assert [row for row in clip_report["results"] if row["init"] == "random"] == \
        [row for row in report["results"] if row["init"] == "random"]
