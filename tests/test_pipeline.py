"""The documented command lines end to end on a real (tiny) dataset: pretrain -> resume -> finetune -> test.

The first pretraining and the refusals run as a user runs them, a Python of their own started in another
directory; the later stages call the same entry points in this process, saving a Python start (~6 s) each.
"""
import base64
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from CPCTrans import main as pretraining
from Evaluate import report as run_report
from Evaluate import test as evaluation
from Evaluate.finetune import run_name as finetune_run_name
from Evaluate.inputs import fill_data_flags

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--img_dim", "64", "--batch_size", "4", "--workers", "1", "--device", "cpu", "--num_seq", "5",
         "--dataset", "demo", "--print_freq", "1"]


def cli(script, *flags, cwd):
    """Runs a CLI the way a user does, from a directory other than the repository."""
    result = subprocess.run([sys.executable, str(REPO / script), *map(str, flags)], cwd=cwd,
                            capture_output=True, text=True)
    return result


def in_process(entry_point, *flags, capsys) -> subprocess.CompletedProcess:
    """Runs a CLI's entry point in this process; its exit status and output as `cli` gives them (a refusal's one
    line on stderr and status 1, as Python prints an uncaught SystemExit)."""
    capsys.readouterr()
    status, refusal = 0, ""
    try:
        entry_point(list(map(str, flags)))
    except SystemExit as stop:
        status, refusal = (1, stop.code + "\n") if isinstance(stop.code, str) else (stop.code or 0, "")
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(flags, status, out, err + refusal)


class ReportPage(HTMLParser):
    """A report.html read as a browser would: its table rows (cell texts) and its images."""

    def __init__(self, path: Path):
        super().__init__()
        self.rows, self.images, self._row, self._cell = [], [], None, None
        self.feed(path.read_text())
        self.close()

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = ""
        elif tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr":
            self.rows.append(self._row)

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def decoded_images(self) -> list:
        prefix = "data:image/png;base64,"
        assert all(source.startswith(prefix) for source in self.images), "every image is embedded"
        return [cv2.imdecode(np.frombuffer(base64.b64decode(source[len(prefix):]), np.uint8), cv2.IMREAD_COLOR)
                for source in self.images]


def only(paths):
    paths = list(paths)
    assert len(paths) == 1, paths
    return paths[0]


@pytest.fixture(scope="module")
def pretrained(demo_dataset, tmp_path_factory):
    logs = tmp_path_factory.mktemp("pretrain")
    result = cli("CPCTrans/main.py", *SMALL, "--csv_root", demo_dataset / "csv", "--epochs", 1, "--diagnose_future",
                 "--log_root", logs, cwd=logs)
    assert result.returncode == 0, result.stderr
    return logs, result


def test_pretraining_writes_checkpoints_and_curves(pretrained):
    logs, result = pretrained
    model_dir = only(logs.glob("log_tmp/*/model"))
    assert sorted(p.name for p in model_dir.iterdir()) == ["epoch1.pth.tar", "model_best_epoch1.pth.tar"]
    state = torch.load(model_dir / "epoch1.pth.tar", weights_only=True)
    assert state["kind"] == "cpc" and state["epoch"] == 1
    assert state["model_config"] == {"net": "resnet18", "num_seq": 5, "pred_step": 3, "attn": "full",
                                   "pos_enc": "none", "gru_dropout": 0.1}
    assert list(model_dir.parent.glob("img/train/events.out.tfevents.*"))
    line = only(line for line in (result.stderr + result.stdout).splitlines() if line.startswith("epoch 1/1"))
    shares = re.search(r"wrong picks: spatial (\S+) temporal (\S+) other video (\S+)  "
                       r"targets across steps: cos (\S+)  future reversed: top1 (\S+)  -> epoch1.pth.tar$", line)
    assert shares and abs(sum(map(float, shares.groups()[:3])) - 1) <= 0.015, line
    assert -1 <= float(shares.group(4)) <= 1 and 0 <= float(shares.group(5)) <= 1, line
    assert abs(state["val_metrics"]["top1_reversed"] - float(shares.group(5))) <= 5e-5  # kept for the table


def test_resume_continues_at_the_next_epoch_with_optimizer_state(pretrained, demo_dataset, capsys):
    logs, _ = pretrained
    model_dir = only(logs.glob("log_tmp/*/model"))
    first = torch.load(model_dir / "epoch1.pth.tar", weights_only=True)
    steps_per_epoch = 10 // 4  # 10 training videos, batch 4, last partial batch dropped
    assert first["optimizer"]["state"][0]["step"] == steps_per_epoch
    result = in_process(pretraining.main, *SMALL, "--csv_root", demo_dataset / "csv", "--epochs", 2,
                        "--log_root", logs, "--resume", model_dir / "epoch1.pth.tar", capsys=capsys)
    assert result.returncode == 0, result.stderr
    assert "at epoch 1" in result.stdout and "epoch 2/2" in result.stderr + result.stdout
    assert "epoch 1/2" not in result.stderr + result.stdout
    second = torch.load(model_dir / "epoch2.pth.tar", weights_only=True)
    assert second["epoch"] == 2
    assert second["optimizer"]["state"][0]["step"] == 2 * steps_per_epoch
    assert not (model_dir / "epoch1.pth.tar").exists()


def test_finetune_then_test_writes_accuracy_json_and_confusion_png(pretrained, demo_dataset, tmp_path, capsys):
    logs, _ = pretrained
    checkpoint = only(logs.glob("log_tmp/*/model/model_best_epoch*.pth.tar"))
    result = in_process(evaluation.main, *SMALL, "--csv_root", demo_dataset / "csv", "--epochs", 1,
                        "--pretrain", checkpoint, "--train_what", "ft", "--log_root", tmp_path, capsys=capsys)
    assert result.returncode == 0, result.stderr
    assert "predictor.0.weight" in result.stdout and "warning:" not in result.stdout
    finetuned = only(tmp_path.glob("log_tmp/*/model/model_best_epoch*.pth.tar"))
    tested = in_process(evaluation.main, "--test", finetuned, "--csv_root", demo_dataset / "csv", "--workers", 1,
                        "--device", "cpu", capsys=capsys)
    assert tested.returncode == 0, tested.stderr
    line = only(line for line in tested.stdout.splitlines() if line.startswith("Acc top1:"))
    report = json.loads(finetuned.with_name(finetuned.name + ".test.json").read_text())
    assert line == f"Acc top1: {report['top1']:.4f} Acc top5: {report['top5']:.4f}"
    assert report["videos_tested"] == 5 and report["videos_skipped"] == 0
    assert (report["dataset"], report["split"], report["num_seq"], report["img_dim"]) == ("demo", 1, 5, 64)
    png = cv2.imread(str(finetuned.with_name(finetuned.name + ".confusion.png")))
    assert png is not None and png.shape[0] > 100

    ten_crop = in_process(evaluation.main, "--test", finetuned, "--ten_crop", "--csv_root", demo_dataset / "csv",
                          "--workers", 1, "--device", "cpu", capsys=capsys)
    assert ten_crop.returncode == 0, ten_crop.stderr
    report = json.loads(finetuned.with_name(finetuned.name + ".test.tencrop.json").read_text())
    assert report["ten_crop"] is True and report["videos_tested"] == 5
    assert finetuned.with_name(finetuned.name + ".tencrop.confusion.png").is_file()

    # The run's page, written by each test: both views' numbers as in their JSON, every image embedded and decoding.
    page = ReportPage(finetuned.parents[1] / "report.html")
    for suffix, view in ((".test.json", "centre"), (".test.tencrop.json", "ten-crop")):
        tested = json.loads(finetuned.with_name(finetuned.name + suffix).read_text())
        start = page.rows.index(["view", view])
        assert page.rows[start + 1:start + 3] == [["top1", f"{tested['top1']:.4f}"], ["top5", f"{tested['top5']:.4f}"]]
    images = page.decoded_images()
    assert len(images) >= 4 and all(image is not None and image.size for image in images)  # curves, 2 confusions
    assert (finetuned.parents[1] / "report.md").read_text().count("](report/") == len(images)
    # Two runs compared: the pretraining and this finetuning, the numbers as their files have them.
    run_report.main([str(only(logs.glob("log_tmp/*/model")).parent), str(finetuned.parents[1]), "--out",
                 str(tmp_path / "compared")])
    table = (tmp_path / "compared" / "comparison.md").read_text().splitlines()
    finetuned_row = only(row for row in table if row.startswith(f"| {finetuned.parents[1].name} |"))
    assert f"| {json.loads(finetuned.with_name(finetuned.name + '.test.json').read_text())['top1']:.4f} |" in finetuned_row


def test_retrieval_reports_recall_for_a_checkpoint_and_for_random_init(pretrained, demo_dataset, tmp_path, capsys):
    logs, _ = pretrained
    checkpoint = only(logs.glob("log_tmp/*/model/model_best_epoch*.pth.tar"))
    # The checkpoint brings its data flags (img_dim 64); a random init is given them.
    for source, flags in ((checkpoint, []), ("random", ["--img_dim", 64, "--num_seq", 5])):
        result = in_process(evaluation.main, "--retrieval", source, *flags, "--csv_root", demo_dataset / "csv",
                            "--workers", 1, "--device", "cpu", "--log_root", tmp_path, capsys=capsys)
        assert result.returncode == 0, result.stderr
        json_path = (checkpoint.with_name(checkpoint.name + ".retrieval.json") if source == checkpoint else
                     only(tmp_path.glob("log_tmp/random_attn-full_pos-none_seed0.retrieval.json")))
        report = json.loads(json_path.read_text())
        recalls = [report[f"R@{k}"] for k in (1, 5, 10, 20)]
        line = only(line for line in result.stdout.splitlines() if line.startswith("retrieval R@1"))
        assert line == "retrieval " + " ".join(f"R@{k}: {r:.4f}" for k, r in zip((1, 5, 10, 20), recalls))
        # 5 test videos query 10 training videos holding every class: the 10 nearest always hit.
        assert recalls == sorted(recalls) and recalls[2:] == [1.0, 1.0]
        assert (report["train_videos"], report["test_videos"], report["img_dim"]) == (10, 5, 64)
        # A linear probe fitted to the same features: its top-1 counts how many of the 5 test videos it got right.
        line = only(line for line in result.stdout.splitlines() if line.startswith("linear probe on the same"))
        assert line.endswith(f"top1 {report['probe_top1']:.4f}")
        right = 5 * report["probe_top1"]
        assert right == pytest.approx(round(right)) and 0 <= right <= 5
    # The pretraining run's page: the checkpoint's recalls, and each query's strip of nearest videos.
    retrieved = json.loads(checkpoint.with_name(checkpoint.name + ".retrieval.json").read_text())
    page = ReportPage(checkpoint.parents[1] / "report.html")
    assert ["R@1", f"{retrieved['R@1']:.4f}"] in page.rows
    assert ["probe_top1", f"{retrieved['probe_top1']:.4f}"] in page.rows
    strips = [image for image in page.decoded_images() if image.shape[1] > 4 * image.shape[0]]
    assert len(retrieved["examples"]) == 5 and len(strips) == 5
    assert all(len(example["neighbours"]) == 5 for example in retrieved["examples"])


def test_a_checkpoint_on_the_pretext_plateau_is_named_in_a_warning(pretrained, demo_dataset, tmp_path, capsys):
    logs, result = pretrained
    checkpoint = only(logs.glob("log_tmp/*/model/model_best_epoch*.pth.tar"))
    assert "warning:" not in result.stdout  # one epoch from random weights: its frames still differ
    # The same weights with the measures of a real 300-step CPU pretraining's last validation, on the 1/3 plateau.
    state = torch.load(checkpoint, weights_only=True)
    state["val_metrics"].update(top1=0.3333, wrong_temporal=0.9375, step_similarity=0.9932)
    plateau = tmp_path / "plateau.pth.tar"
    torch.save(state, plateau)
    # The same once more, as if pretrained with per-clip color: the advice to use it goes.
    state["args"]["color_aug"] = "clip"
    plateau_per_clip = tmp_path / "plateau_per_clip.pth.tar"
    torch.save(state, plateau_per_clip)
    per_clip_advice = ", or pretrain with --color_aug clip"
    finetune = [*SMALL, "--epochs", 1, "--log_root", tmp_path, "--pretrain"]
    for flags, source, advice in ((["--retrieval"], checkpoint, None), (["--retrieval"], plateau, per_clip_advice),
                                  (finetune, plateau, per_clip_advice), (["--retrieval"], plateau_per_clip, "")):
        result = in_process(evaluation.main, *flags, source, "--csv_root", demo_dataset / "csv", "--workers", 1,
                            "--device", "cpu", capsys=capsys)
        assert result.returncode == 0, result.stderr
        warnings = [line for line in result.stdout.splitlines() if line.startswith("warning:")]
        assert warnings == ([f"warning: {source}: its last validation sits on the pretext's 1/3 plateau (top1 "
                             "0.3333, 94% of the wrong picks temporal, targets across steps at cos 0.99): the encoder "
                             "gives a clip's frames nearly the same output and its features carry little motion "
                             f"(docs/results.md); pretrain until the top-1 leaves 1/3{advice}"]
                            if advice is not None else [])


def test_pretraining_choices_are_recorded_and_the_architecture_travels_to_finetuning(demo_dataset, tmp_path, capsys):
    pretrain_logs, finetune_logs = tmp_path / "pretrain", tmp_path / "finetune"
    result = in_process(pretraining.main, *SMALL, "--csv_root", demo_dataset / "csv", "--epochs", 1, "--attn", "causal",
                        "--pos_enc", "sincos", "--color_aug", "clip", "--log_root", pretrain_logs, capsys=capsys)
    assert result.returncode == 0, result.stderr
    checkpoint = only(pretrain_logs.glob("log_tmp/*/model/epoch1.pth.tar"))
    assert checkpoint.parents[1].name.endswith("_attn-causal_train-all_pos-sincos_color-clip")
    state = torch.load(checkpoint, weights_only=True)
    assert state["args"]["color_aug"] == "clip"
    assert "top1_reversed" not in state["val_metrics"], "the reversed-future pass only with --diagnose_future"
    refused = in_process(evaluation.main, *SMALL, "--csv_root", demo_dataset / "csv", "--epochs", 1, "--pretrain",
                         checkpoint, "--pos_enc", "learned", "--log_root", finetune_logs, capsys=capsys)
    assert refused.returncode != 0 and refused.stderr.strip().count("\n") == 0
    assert "--pos_enc sincos" in refused.stderr and str(checkpoint) in refused.stderr
    result = in_process(evaluation.main, *SMALL, "--csv_root", demo_dataset / "csv", "--epochs", 1, "--pretrain",
                        checkpoint, "--train_what", "last", "--log_root", finetune_logs, capsys=capsys)
    assert result.returncode == 0, result.stderr
    finetuned = torch.load(only(finetune_logs.glob("log_tmp/*/model/epoch1.pth.tar")), weights_only=True)
    assert (finetuned["model_config"]["attn"], finetuned["model_config"]["pos_enc"]) == ("causal", "sincos")
    assert finetuned["args"]["color_jitter"] == "off", "a linear probe trains on crops and flips only"


def test_color_jitter_is_on_for_finetuning_and_off_for_a_linear_probe_unless_asked():
    for flags, jitter in ((["--train_what", "ft"], "on"), (["--train_what", "last"], "off"),
                          (["--train_what", "last", "--color_jitter", "on"], "on"),
                          (["--train_what", "all", "--color_jitter", "off"], "off")):
        args = evaluation.parse_args(["--dataset", "demo", "--img_dim", "64", *flags])
        fill_data_flags(args)
        assert args.color_jitter == jitter
        # runs without the reference's jitter get their own folder: they never continue or reuse one with it
        assert finetune_run_name(args).endswith("_jitter-off") == (jitter == "off")


def test_test_refuses_a_pretraining_checkpoint_in_one_line(pretrained, demo_dataset, tmp_path):
    logs, _ = pretrained
    checkpoint = only(logs.glob("log_tmp/*/model/model_best_epoch*.pth.tar"))
    result = cli("Evaluate/test.py", "--test", checkpoint, "--csv_root", demo_dataset / "csv", cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert str(checkpoint) in result.stderr and "finetuned checkpoint" in result.stderr


def test_missing_csv_is_one_clear_line(tmp_path):
    result = cli("CPCTrans/main.py", "--csv_root", tmp_path / "nothing", "--device", "cpu", cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0
    assert "classInd.txt" in result.stderr and "write_csv.py" in result.stderr


def test_evaluation_flags_that_do_not_go_together_are_refused_in_one_line(capsys):
    for flags, message in ((["--test", "a.pth.tar", "--retrieval", "b.pth.tar"], "give one of them"),
                           (["--ten_crop"], "use it with --test")):
        with pytest.raises(SystemExit) as refused:
            evaluation.main(flags)
        assert refused.value.code == 2 and message in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("entry_point", [pretraining.main, evaluation.main])
def test_a_val_freq_below_one_is_refused_in_one_line(entry_point, capsys):
    with pytest.raises(SystemExit) as refused:
        entry_point(["--val_freq", "0"])
    assert refused.value.code == 2
    assert "--val_freq: must be at least 1, got 0" in capsys.readouterr().err.strip().splitlines()[-1]


def test_validation_uses_the_references_share_of_the_test_split(capsys):
    assert pretraining.parse_args([]).val_fraction == 0.3
    for flags, share in ((["--dataset", "ucf101"], 0.3), (["--dataset", "hmdb51"], 0.4),
                         (["--dataset", "hmdb51", "--val_fraction", "1"], 1.0)):
        args = evaluation.parse_args(flags)
        fill_data_flags(args)
        assert args.val_fraction == share, flags
    with pytest.raises(SystemExit) as refused:
        pretraining.parse_args(["--val_fraction", "0"])
    assert refused.value.code == 2 and "must be in (0, 1]" in capsys.readouterr().err
