"""Pretrained vs random initialisation on the demo dataset: the reference's comparison table in miniature.

    python Evaluate/experiment.py --preset cpu      # on a CPU
    python Evaluate/experiment.py --preset gpu      # on one GPU, two runs at a time (docs/results.md: times)

For every --attn and seed: pretrain with CPCTrans/main.py, then, from those weights and from a random
initialisation, finetune (--train_what ft) and linearly probe (--train_what last) with Evaluate/test.py,
test the last epoch of each, and retrieve nearest neighbours (--retrieval, which also fits a linear probe to
the same frozen features until it converges). Prints a markdown table of
mean ± std over the seeds and writes it, with every run's numbers, to <out>/results.md and results.json.
Everything goes through the same functions as the command lines; finished pieces are kept, so a rerun
continues where an interrupted one stopped. --compile MODE goes to pretraining, finetuning and retrieval;
run folders do not name it, so pieces finished without it are reused. --jobs N runs the attentions and seeds
side by side in N processes (the gpu preset: 2 unless told otherwise). --photos DIR films the demo's camera
motions over your photographs (make_demo.py --photos), closer to real footage; --csv_root DIR runs the same
comparison on your own dataset, indexed by write_csv.py, instead of the demo's videos.
"""
import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from CPCTrans import main as pretraining
from CPCTrans.augment import COLOR_AUG_KINDS
from CPCTrans.checkpoint import CheckpointError, load
from CPCTrans.data import DataError
from CPCTrans.encoder import ATTENTION_KINDS, POSITION_KINDS
from CPCTrans.resume import resumable_checkpoints
from CPCTrans.runtime import REPO_ROOT, add_compile_flag, run_folder, user_error
from CPCTrans.training import TrainingDiverged
from Evaluate import finetune, retrieval, testing
from Evaluate import test as evaluation
from Evaluate.inputs import fill_data_flags
from ProcessData import extract_frame, make_demo, write_csv


@dataclass(frozen=True)
class Preset:
    groups: int  # demo source groups per class; a third of them are tested
    clips: int  # clips per group
    frames: int  # frames per video
    img_dim: int
    batch_size: int
    workers: int
    device: str
    pretrain_epochs: int
    finetune_epochs: int
    probe_epochs: int
    jobs: int  # attentions and seeds run side by side unless --jobs says otherwise


PRESETS = {
    # 90 videos (60 train / 30 test), 60 pretraining steps per run: sized for two CPU cores.
    "cpu": Preset(groups=9, clips=2, frames=30, img_dim=64, batch_size=16, workers=0, device="cpu",
                  pretrain_epochs=20, finetune_epochs=10, probe_epochs=10, jobs=1),
    # 1,200 videos (800 train / 400 test) at 128 px, 1,500 pretraining steps per run: long enough for the pretext
    # to leave its 1/3 plateau with per-clip color. Two runs at a time share the card best (docs/results.md).
    "gpu": Preset(groups=30, clips=8, frames=40, img_dim=128, batch_size=32, workers=12, device="cuda",
                  pretrain_epochs=60, finetune_epochs=10, probe_epochs=10, jobs=2),
    # The machinery end to end in about a minute per seed on a CPU; its numbers mean nothing.
    "smoke": Preset(groups=3, clips=1, frames=16, img_dim=32, batch_size=4, workers=0, device="cpu",
                    pretrain_epochs=1, finetune_epochs=1, probe_epochs=1, jobs=1),
}
CLIP = ["--num_seq", "5", "--pred_step", "3", "--ds", "3"]
METRICS = (("finetune", "top1"), ("linear probe", "top1"), ("feature probe", "top1"), ("retrieval", "R@1"))
# The pretraining's last validation, for the pretrained rows: a pretext stuck at 1/3 with targets alike across
# steps (cos near 1) gives a clip's frames nearly the same output, and finetuning from it can fall below random
# initialisation; a pretext whose top-1 holds with its predicted frames reversed tells its steps apart by where
# they sit, or not at all, but not by what they show. Columns: name, key in the checkpoint's val_metrics, and how
# a value is shown (scale, digits).
PRETEXT = (("pretext top1", "top1", 100, 1), ("pretext top1, future reversed", "top1_reversed", 100, 1),
           ("targets across steps cos", "step_similarity", 1, 2))


def canvases_name(photos: Path | None) -> str:
    """What the demo's camera films, in words: recorded with the videos and in the results."""
    return f"photos {photos.resolve()}" if photos else "textured canvases"


def prepare_dataset(out: Path, preset: Preset, photos: Path | None = None) -> Path:
    """Generates, extracts and indexes the demo videos once, over textured canvases or over `photos`; returns the
    CSV folder. A folder whose videos were filmed over other canvases is refused, never mixed or reused."""
    canvases = canvases_name(photos)
    record = out / "canvases.txt"
    made_over = record.read_text() if record.is_file() else "canvases it does not record"
    if made_over != canvases and (out / "videos").exists():
        raise make_demo.DemoError(f"{out}: its videos were filmed over {made_over}, not {canvases}; give another "
                                  f"--out")
    csv_root = out / "csv"
    if (csv_root / "test_split01.csv").is_file():
        return csv_root
    canvas = make_demo.PhotoCanvases(photos) if photos else make_demo.textured_canvas
    out.mkdir(parents=True, exist_ok=True)
    record.write_text(canvases)
    workers = max(1, preset.workers)
    if not (out / "ucfTrainTestlist" / "testlist01.txt").is_file():
        make_demo.make_demo(out, preset.groups, preset.clips, preset.frames, seed=0, workers=workers, canvas=canvas)
    steps = (extract_frame.main(["--video_root", str(out / "videos"), "--frame_root", str(out / "frames"),
                                 "--workers", str(workers)]),
             write_csv.main(["--dataset", "ucf101", "--frame_root", str(out / "frames"), "--split_root",
                             str(out / "ucfTrainTestlist"), "--csv_root", str(csv_root), "--strict"]))
    if any(steps):
        sys.exit(f"error: preparing the demo dataset under {out} failed; see above")
    return csv_root


def last_checkpoint(model_dir: Path, epochs: int) -> Path:
    path = model_dir / f"epoch{epochs}.pth.tar"
    if not path.is_file():
        sys.exit(f"{path} was not written (stopped?); run the same command again to continue")
    return path


def continue_run(args: argparse.Namespace, model_dir: Path) -> None:
    """An interrupted run of this experiment continues from its newest checkpoint."""
    if resumable_checkpoints(model_dir):
        args.resume = "latest"


def cached(path: Path, compute, key: str) -> dict:
    """The JSON result at `path`, computed (and written there by `compute`) when missing or written before it
    held `key`."""
    if path.is_file():
        result = json.loads(path.read_text())
        if key in result:
            return result
    compute()
    return json.loads(path.read_text())


class Runner:
    """Runs the stages of one experiment with shared flags; every output under `logs`."""

    def __init__(self, preset: Preset, csv_root: Path, logs: Path, pos_enc: str, color_aug: str,
                 compile_mode: str | None = None, dataset: str = "demo"):
        self.preset = preset
        self.csv_root = csv_root
        self.logs = logs
        self.pos_enc = pos_enc
        self.color_aug = color_aug
        self.seconds = defaultdict(float)  # wall time per kind of stage: where a preset's budget goes
        self.progress = None  # given a line as each stage ends; runs side by side set it (run_unit_in_process)
        self.common = ["--csv_root", str(csv_root), "--dataset", dataset, "--img_dim", str(preset.img_dim),
                       "--batch_size", str(preset.batch_size), "--workers", str(preset.workers), "--device",
                       preset.device, *CLIP, *(["--compile", compile_mode] if compile_mode else [])]

    @contextmanager
    def timed(self, stage: str, init: str | None = None):
        started = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - started
            self.seconds[stage] += seconds
        if self.progress:
            weights = "" if init is None else " from random weights" if init == "random" else " from the pretraining"
            self.progress(f"{stage}{weights} took {seconds / 60:.1f} minutes")

    def pretrain(self, attn: str, seed: int) -> Path:
        # Validating and saving never change training (--val_freq, --save_freq): four of each per pretraining keep
        # the epoch lines' diagnostics, and an interrupted experiment loses at most a quarter of a pretraining.
        every = str(max(1, self.preset.pretrain_epochs // 4))
        args = pretraining.parse_args([*self.common, "--epochs", str(self.preset.pretrain_epochs), "--attn", attn,
                                       "--pos_enc", self.pos_enc, "--color_aug", self.color_aug, "--seed", str(seed),
                                       # Run folders do not name the epochs; pretrainings of different lengths
                                       # must not continue each other.
                                       "--prefix", f"seed{seed}_epochs{self.preset.pretrain_epochs}",
                                       "--val_freq", every, "--save_freq", every,
                                       # The table's pretext columns: over every test video, future reversed too.
                                       "--val_fraction", "1", "--diagnose_future",
                                       "--log_root", str(self.logs / "pretrain")])
        model_dir = run_folder(args, pretraining.run_name(args)) / "model"
        with self.timed("pretraining"):
            if not (model_dir / f"epoch{self.preset.pretrain_epochs}.pth.tar").is_file():
                continue_run(args, model_dir)
                pretraining.train(args)
        return last_checkpoint(model_dir, self.preset.pretrain_epochs)

    def classify(self, init: str, attn: str, seed: int, train_what: str) -> dict:
        """Finetunes or probes from `init` (a checkpoint or 'random'), then tests the last epoch."""
        epochs = self.preset.finetune_epochs if train_what == "ft" else self.preset.probe_epochs
        architecture = ["--attn", attn, "--pos_enc", self.pos_enc] if init == "random" else []
        # A finetuning run is named after its checkpoint's file only: the pretraining's run folder, which names
        # every pretraining choice, keeps runs from different pretrainings apart. Random-init runs are shared.
        source = "random" if init == "random" else Path(init).parents[1].name
        prefix = f"{attn}_pos-{self.pos_enc}_seed{seed}_{source}"
        # The last epoch is the one tested, so it is the only one validated and saved.
        args = evaluation.parse_args([*self.common, "--epochs", str(epochs), "--pretrain", init, "--train_what",
                                      train_what, "--seed", str(seed), "--prefix", prefix, *architecture,
                                      "--val_freq", str(epochs), "--save_freq", str(epochs),
                                      "--log_root", str(self.logs / "finetune")])
        fill_data_flags(args)
        model_dir = run_folder(args, finetune.run_name(args)) / "model"
        checkpoint = model_dir / f"epoch{epochs}.pth.tar"

        def finetune_and_test():
            if not checkpoint.is_file():
                continue_run(args, model_dir)
                finetune.finetune(args)
            testing.test(evaluation.parse_args(["--test", str(last_checkpoint(model_dir, epochs)), "--csv_root",
                                                   str(self.csv_root), "--workers", str(self.preset.workers),
                                                   "--device", self.preset.device]))
        with self.timed("finetuning and test" if train_what == "ft" else "linear probe and test", init):
            return cached(checkpoint.with_name(checkpoint.name + ".test.json"), finetune_and_test, "top1")

    def retrieve(self, init: str, attn: str, seed: int) -> dict:
        architecture = ["--attn", attn, "--pos_enc", self.pos_enc] if init == "random" else []
        args = evaluation.parse_args([*self.common, "--retrieval", init, "--seed", str(seed), *architecture,
                                      "--prefix", "retrieval", "--log_root", str(self.logs / "retrieval")])
        path = (Path(init).with_name(Path(init).name + ".retrieval.json") if init != "random" else
                retrieval.random_retrieval_path(args, attn, self.pos_enc))
        with self.timed("retrieval", init):
            return cached(path, lambda: retrieval.retrieve(args), "probe_top1")


def run_unit(runner: Runner, attn: str, seed: int) -> dict:
    """One attention and seed: pretrain, then finetune, probe and retrieve from those weights and from random
    ones -> {(attn, init): {metric: [value]}}, init being 'random' or 'pretrained'."""
    results = {}
    checkpoint = runner.pretrain(attn, seed)
    for init, source in (("random", "random"), ("pretrained", str(checkpoint))):
        row = results[(attn, init)] = {metric: [] for metric, _ in METRICS}
        row["finetune"].append(runner.classify(source, attn, seed, "ft")["top1"])
        row["linear probe"].append(runner.classify(source, attn, seed, "last")["top1"])
        retrieved = runner.retrieve(source, attn, seed)
        row["feature probe"].append(retrieved["probe_top1"])
        row["retrieval"].append(retrieved["R@1"])
    pretext = load(checkpoint)["val_metrics"]
    for name, key, *_ in PRETEXT:
        if key in pretext:
            results[(attn, "pretrained")][name] = [pretext[key]]
    return results


def run_unit_in_process(runner: Runner, jobs: int, unit: tuple[str, int]) -> tuple[dict, dict]:
    """run_unit in a process of its own, its console output in <logs>/<attn>_seed<S>.txt but for one line per
    finished stage, its share of the CPU threads; returns the results and the seconds its stages took."""
    attn, seed = unit
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // jobs))
    runner.logs.mkdir(parents=True, exist_ok=True)
    console = sys.stdout
    runner.progress = lambda line: print(f"{attn} seed {seed}: {line}", file=console, flush=True)
    with open(runner.logs / f"{attn}_seed{seed}.txt", "w") as log, redirect_stdout(log), redirect_stderr(log):
        return run_unit(runner, attn, seed), dict(runner.seconds)


def run_side_by_side(runner: Runner, units: list[tuple[str, int]], jobs: int) -> list[dict]:
    """run_unit for every (attn, seed) in `jobs` spawned processes, each on the same device; their results in the
    units' order, the seconds of their stages added to the runner's. Says when each unit is done."""
    print(f"{len(units)} runs, {jobs} at a time, each in a process of its own; their console output goes to "
          f"{runner.logs}/<attn>_seed<S>.txt", flush=True)
    started = time.perf_counter()
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(run_unit_in_process, runner, jobs, unit): unit for unit in units}
        try:
            for future in as_completed(futures):
                attn, seed = futures[future]
                future.result()
                print(f"{attn} seed {seed} done after {(time.perf_counter() - started) / 60:.1f} minutes", flush=True)
        except BaseException:
            pool.shutdown(cancel_futures=True)  # the runs under way finish, and a rerun reuses them
            raise
    outcomes = []
    for future in futures:  # in the units' order
        unit_results, seconds = future.result()
        outcomes.append(unit_results)
        for stage, value in seconds.items():
            runner.seconds[stage] += value
    return outcomes


def side_by_side_jobs(requested: int | None, preset: Preset, units: int) -> int:
    """Processes to run `units` attentions and seeds in: --jobs if given, else the preset's; no more than units."""
    return min(preset.jobs if requested is None else requested, units)


def share_of_workers(preset: Preset, jobs: int) -> Preset:
    """The preset each of `jobs` runs side by side takes: its share of the loader workers, as of the CPU threads, at
    least one (none where the preset loads in the main process). The preset's count is for one run alone on the
    machine (more workers than cores made runs side by side slower than one at a time; docs/results.md).
    Which clips a run sees comes from its seed, not from how many workers load them."""
    return replace(preset, workers=max(1, preset.workers // jobs) if preset.workers else 0)


def run_experiment(runner: Runner, attns: list[str], seeds: list[int], jobs: int = 1) -> dict:
    """{(attn, init): {metric: [one value per seed]}}, init being 'random' or 'pretrained'. With `jobs` > 1 the
    attentions and seeds run side by side in that many processes (run_side_by_side)."""
    units = [(attn, seed) for attn in attns for seed in seeds]
    if jobs == 1:
        outcomes = [run_unit(runner, attn, seed) for attn, seed in units]
    else:
        outcomes = run_side_by_side(runner, units, jobs)
    results = {}
    for unit_results in outcomes:
        for key, row in unit_results.items():
            merged = results.setdefault(key, {})
            for name, values in row.items():
                merged.setdefault(name, []).extend(values)
    return results


def mean_std(values: list[float], scale: float = 100, digits: int = 1) -> str:
    """Percent by default; "–" where there are no values."""
    if not values:
        return "–"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{scale * statistics.mean(values):.{digits}f} ± {scale * spread:.{digits}f}"


def markdown_table(results: dict, seeds: list[int]) -> str:
    columns = [f"{name} {key}" for name, key in METRICS] + [name for name, *_ in PRETEXT]
    lines = ["| attention | initialisation | " + " | ".join(columns) + " |", "|" + "---|" * (2 + len(columns))]
    for (attn, init), row in results.items():
        cells = [mean_std(row[name]) for name, _ in METRICS]
        cells += [mean_std(row.get(name, []), scale, digits) for name, _, scale, digits in PRETEXT]
        lines.append(f"| {attn} | {init} | " + " | ".join(cells) + " |")
    lines.append(f"\n(percent, mean ± std over seeds {', '.join(map(str, seeds))}; top-1 on the test split's "
                 f"videos; feature probe: a logistic regression fitted to convergence on the frozen features "
                 f"that retrieval uses; R@1: test videos querying training videos; the pretext columns are the "
                 f"pretraining's last validation: its top-1, the same with the predicted frames in reverse order "
                 f"(as high when the hits do not come from what those frames show), and the mean cosine "
                 f"similarity of a video's targets at different steps, near 1 when the encoder stopped seeing "
                 f"time)")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Pretrained vs random initialisation on the demo dataset or yours")
    parser.add_argument("--preset", required=True, choices=sorted(PRESETS))
    parser.add_argument("--out", type=Path, default=None,
                        help="default: experiment_output/<preset>, <preset>_photos with --photos, "
                             "<preset>_<folder name> with --csv_root")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--attn", nargs="+", default=["full", "causal"], choices=ATTENTION_KINDS)
    parser.add_argument("--pos_enc", default="none", choices=POSITION_KINDS)
    # Per clip by default: on the demo videos the reference's per-frame color leaves the pretext on its 1/3
    # plateau, whose weights finetune no better than random ones (docs/results.md).
    parser.add_argument("--color_aug", default="clip", choices=COLOR_AUG_KINDS,
                        help="pretraining's color augmentation, per clip (default here) or per frame (the "
                             "reference, CPCTrans/main.py's default)")
    parser.add_argument("--pretrain_epochs", type=int, default=None,
                        help="pretrain this many epochs instead of the preset's (the plateau may need more)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="run the attentions and seeds side by side in this many processes (on a GPU they "
                             "share the card); each one's console output goes to <out>/logs/<attn>_seed<S>.txt "
                             "(default: the preset's, 2 for gpu, 1 for the others)")
    parser.add_argument("--photos", type=Path, default=None,
                        help="film the demo videos over random crops of the .jpg/.png photographs in this folder "
                             "(make_demo.py --photos) instead of textured canvases")
    parser.add_argument("--csv_root", type=Path, default=None,
                        help="compare on your own dataset instead of the demo's: a folder written by write_csv.py "
                             "(train_split01.csv, test_split01.csv, classInd.txt); its name names the runs")
    add_compile_flag(parser)  # passed to pretraining, finetuning and retrieval
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    preset = PRESETS[args.preset]
    if args.pretrain_epochs is not None:
        if args.pretrain_epochs < 1:
            sys.exit(f"error: --pretrain_epochs must be at least 1, got {args.pretrain_epochs}")
        preset = replace(preset, pretrain_epochs=args.pretrain_epochs)
    if args.jobs is not None and args.jobs < 1:
        sys.exit(f"error: --jobs must be at least 1, got {args.jobs}")
    jobs = side_by_side_jobs(args.jobs, preset, len(args.attn) * len(args.seeds))
    if preset.device == "cuda" and not torch.cuda.is_available():  # before minutes of making the videos
        sys.exit(f"error: --preset {args.preset} needs a CUDA device and none is visible; --preset cpu runs on the CPU")
    if args.csv_root and args.photos:
        sys.exit("error: --csv_root gives the data and --photos films the demo's; give one of them")
    photos = args.photos.resolve() if args.photos else None
    own_data = args.csv_root.resolve() if args.csv_root else None
    suffix = "_photos" if photos else f"_{own_data.name}" if own_data else ""
    out = (args.out or REPO_ROOT / "experiment_output" / (args.preset + suffix)).resolve()
    data_name = f"dataset {own_data}" if own_data else canvases_name(photos)
    started = time.perf_counter()
    try:
        csv_root = own_data or prepare_dataset(out / "data", preset, photos)
    except make_demo.DemoError as error:
        sys.exit(f"error: {error}")
    runner = Runner(share_of_workers(preset, jobs), csv_root, out / "logs", args.pos_enc, args.color_aug, args.compile,
                    dataset=own_data.name if own_data else "demo")
    try:
        results = run_experiment(runner, args.attn, args.seeds, jobs)
    except (DataError, CheckpointError, TrainingDiverged, ValueError) as error:
        sys.exit(f"error: {user_error(error)}")
    minutes = (time.perf_counter() - started) / 60
    stage_minutes = {stage: round(seconds / 60, 2) for stage, seconds in runner.seconds.items()}
    table = markdown_table(results, args.seeds)
    summed = f", summed over {jobs} jobs" if jobs > 1 else ""
    stages = ", ".join(f"{stage} {value:.1f}" for stage, value in stage_minutes.items())
    summary = (f"preset {args.preset} ({asdict(runner.preset)}), {data_name}, pos_enc {args.pos_enc}, "
               f"color_aug {args.color_aug}, {minutes:.1f} minutes ({stages}{summed})")
    (out / "results.md").write_text(f"{table}\n\n{summary}\n")
    (out / "results.json").write_text(json.dumps({"preset": args.preset, "settings": asdict(runner.preset),
                                                  "photos": str(photos) if photos else None,
                                                  "csv_root": str(csv_root),
                                                  "pos_enc": args.pos_enc, "color_aug": args.color_aug,
                                                  "minutes": minutes, "jobs": jobs,
                                                  "minutes_by_stage": stage_minutes,
                                                  "results": [{"attn": attn, "init": init, **row}
                                                              for (attn, init), row in results.items()]},
                                                 indent=2) + "\n")
    print(f"\n{table}\n\n{summary}\nwrote {out / 'results.md'} and {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
