"""The quick start: the whole workflow on the embedded demo dataset, through the real command lines.

    python ProcessData/run_demo.py

Generates the demo videos, extracts frames, writes the split CSVs, pretrains, finetunes from the
pretrained weights, tests the finetuned model and prints its accuracy. Everything goes under --out;
a rerun reuses the extracted frames and trains afresh (the previous demo run's checkpoints are removed).
"""
import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def run(script: str, *flags) -> None:
    command = [sys.executable, str(REPO_ROOT / script), *map(str, flags)]
    print("\n$ " + " ".join(command[1:]), flush=True)
    if subprocess.run(command).returncode != 0:
        sys.exit(f"error: {script} failed; see its output above")


def best_checkpoint(log_dir: Path) -> Path:
    found = sorted(log_dir.glob("log_*/*/model/model_best_epoch*.pth.tar"), key=lambda path: path.stat().st_mtime)
    if not found:
        sys.exit(f"error: no model_best_epoch*.pth.tar under {log_dir}")
    return found[-1]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run generate -> extract -> CSV -> pretrain -> finetune -> test")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "demo_output")
    parser.add_argument("--img_dim", default=64, type=int)
    parser.add_argument("--pretrain_epochs", default=8, type=int)
    parser.add_argument("--finetune_epochs", default=8, type=int)
    parser.add_argument("--batch_size", default=8, type=int)
    parser.add_argument("--workers", default=2, type=int)
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = args.out.resolve()
    common = ["--img_dim", args.img_dim, "--batch_size", args.batch_size, "--workers", args.workers,
              "--device", args.device, "--dataset", "demo", "--csv_root", out / "csv", "--prefix", "demo"]
    run("ProcessData/make_demo.py", "--out", out)
    run("ProcessData/extract_frame.py", "--video_root", out / "videos", "--frame_root", out / "frames",
        "--workers", args.workers)
    run("ProcessData/write_csv.py", "--dataset", "ucf101", "--frame_root", out / "frames",
        "--split_root", out / "ucfTrainTestlist", "--csv_root", out / "csv")
    for previous_run in (out / "pretrain", out / "finetune"):
        if previous_run.is_dir():
            print(f"removing the previous demo run in {previous_run}")
            shutil.rmtree(previous_run)
    run("CPCTrans/main.py", *common, "--epochs", args.pretrain_epochs, "--num_seq", 5, "--pred_step", 3,
        "--log_root", out / "pretrain")
    pretrained = best_checkpoint(out / "pretrain")
    run("Evaluate/test.py", *common, "--epochs", args.finetune_epochs, "--num_seq", 5, "--train_what", "ft",
        "--pretrain", pretrained, "--log_root", out / "finetune")
    finetuned = best_checkpoint(out / "finetune")
    run("Evaluate/test.py", "--test", finetuned, "--csv_root", out / "csv", "--workers", args.workers,
        "--device", args.device)
    result = json.loads(finetuned.with_name(finetuned.name + ".test.json").read_text())
    classes = len((out / "csv" / "classInd.txt").read_text().splitlines())
    print(f"\ndemo finished: top-1 {result['top1']:.3f}, top-5 {result['top5']:.3f} on "
          f"{result['videos_tested']} test videos of {classes} classes (chance {1 / classes:.2f})\n"
          f"pretrained: {pretrained}\nfinetuned:  {finetuned}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
