"""One page per run: its settings, curves, test and retrieval results, as report.html (self-contained, images
embedded) and report.md (images beside it, in report/), written into the run's folder. Several run folders also get
one comparison table (--out, by default beside the first one).

    python Evaluate/report.py RUN_DIR [RUN_DIR ...] [--out DIR]     (a run folder holds model/ and img/)

--test and --retrieval write the report of their checkpoint's run folder when they finish. Open report.html in any
browser; it needs no server.
"""
import argparse
import base64
import html
import json
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tensorboardX.proto import event_pb2

from CPCTrans.checkpoint import CheckpointError, load
from CPCTrans.cpc import plateau_warning
from CPCTrans.data import frame_path

CURVES = (("loss", ("loss",)), ("accuracy", ("top1", "top5")),
          ("wrong picks", ("wrong_spatial", "wrong_temporal", "wrong_easy")))
COMPARED = (("kind", "kind"), ("pretrained from", "pretrain"), ("test top1", "test_top1"), ("test top5", "test_top5"),
            ("retrieval R@1", "R@1"), ("feature probe top1", "probe_top1"), ("pretext top1", "top1"),
            ("pretext top1, future reversed", "top1_reversed"), ("targets across steps cos", "step_similarity"))
THUMB = 96  # side of a frame in the retrieval strips


@dataclass
class Run:
    folder: Path
    state: dict  # the newest epoch checkpoint's
    checkpoint: Path
    curves: dict = field(default_factory=dict)  # {stage: {metric: [(epoch, value)]}}
    tests: dict = field(default_factory=dict)  # {"centre" | "ten-crop": test JSON}
    retrieval: dict | None = None


def read_scalars(events: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} of the scalars in a tensorboard event file (length-prefixed records of Event protos)."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    data = events.read_bytes()
    offset = 0
    while offset + 12 <= len(data):
        length = struct.unpack("<Q", data[offset:offset + 8])[0]
        event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
        offset += 12 + length + 4
        for value in event.summary.value:
            if value.WhichOneof("value") == "simple_value":
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def epoch_curves(run_dir: Path) -> dict:
    """{stage: {metric: [(epoch, value)]}} from the per-epoch ("global/") scalars of img/train and img/val."""
    curves = {}
    for stage in ("train", "val"):
        merged: dict[str, list] = {}
        for events in sorted((run_dir / "img" / stage).glob("events.out.tfevents.*")):
            for tag, points in read_scalars(events).items():
                if tag.startswith("global/"):
                    merged.setdefault(tag.removeprefix("global/"), []).extend(points)
        curves[stage] = {metric: sorted(dict(points).items()) for metric, points in merged.items()}
    return curves


def collect(run_dir: Path) -> Run:
    """A run folder's newest epoch checkpoint, curves and result files."""
    checkpoints = [path for path in (run_dir / "model").glob("epoch*.pth.tar")]
    if not checkpoints:
        raise CheckpointError(f"{run_dir}: no model/epochN.pth.tar; give a run folder of CPCTrans/main.py or "
                              f"Evaluate/test.py")
    checkpoint = max(checkpoints, key=lambda path: int(path.name.removeprefix("epoch").split(".")[0]))
    run = Run(run_dir, load(checkpoint), checkpoint, epoch_curves(run_dir))
    for result in sorted((run_dir / "model").glob("*.test*.json")):
        run.tests["ten-crop" if ".tencrop." in result.name else "centre"] = json.loads(result.read_text())
    retrieved = sorted((run_dir / "model").glob("*.retrieval.json"))
    if retrieved:
        run.retrieval = json.loads(retrieved[-1].read_text())
    return run


def draw_curves(points: dict[str, list[tuple[int, float]]], title: str, width: int = 480, height: int = 300):
    """A line chart of several series of (epoch, value), drawn with OpenCV; None when there is nothing to draw."""
    series = {name: values for name, values in points.items() if values}
    if not series:
        return None
    image = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 50, width - 10, 30, height - 40
    xs = [x for values in series.values() for x, _ in values]
    ys = [y for values in series.values() for _, y in values]
    x_low, x_high = min(xs), max(max(xs), min(xs) + 1)
    y_low, y_high = min(ys), max(max(ys), min(ys) + 1e-6)

    def place(x, y):
        return (int(left + (x - x_low) / (x_high - x_low) * (right - left)),
                int(bottom - (y - y_low) / (y_high - y_low) * (bottom - top)))
    cv2.rectangle(image, (left, top), (right, bottom), (180, 180, 180), 1)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(image, title, (left, 20), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    for value, y in ((y_high, top), (y_low, bottom)):
        cv2.putText(image, f"{value:.3g}", (2, y + 4), font, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(image, f"epoch {x_low}", (left, bottom + 15), font, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(image, f"{x_high}", (right - 20, bottom + 15), font, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    colors = [(200, 80, 30), (40, 140, 40), (30, 30, 200), (150, 50, 150), (20, 160, 200), (90, 90, 90)]
    for index, (name, values) in enumerate(series.items()):
        color = colors[index % len(colors)]
        line = np.array([place(x, y) for x, y in values], np.int32)
        cv2.polylines(image, [line], False, color, 2, cv2.LINE_AA)
        for point in line:
            cv2.circle(image, tuple(int(v) for v in point), 3, color, -1)
        cv2.putText(image, name, (left + 8 + 150 * (index % 3), bottom + 32), font, 0.4, color, 1, cv2.LINE_AA)
    return image


def middle_frame(video: dict) -> np.ndarray:
    image = cv2.imread(frame_path(video["folder"], video["frames"] // 2))
    if image is None:
        image = np.full((THUMB, THUMB, 3), 127, np.uint8)
    return cv2.resize(image, (THUMB * image.shape[1] // image.shape[0], THUMB))


def retrieval_strip(example: dict) -> np.ndarray:
    """The query's middle frame, then its nearest training videos', each framed green where the class matches."""
    tiles = [cv2.copyMakeBorder(middle_frame(example["query"]), 4, 4, 4, 4, cv2.BORDER_CONSTANT, value=(0, 0, 0))]
    for neighbour in example["neighbours"]:
        color = (0, 170, 0) if neighbour["class"] == example["query"]["class"] else (0, 0, 210)
        tiles.append(cv2.copyMakeBorder(middle_frame(neighbour), 4, 4, 4, 4, cv2.BORDER_CONSTANT, value=color))
    gap = np.full((tiles[0].shape[0], 12, 3), 255, np.uint8)
    return np.hstack([tiles[0], gap, *tiles[1:]])


def per_class(test: dict) -> list[tuple[str, float, int]]:
    """(class, top-1, videos) for every class, worst first."""
    matrix = np.array(test["confusion"])
    counts = matrix.sum(axis=1)
    accuracy = np.divide(matrix.diagonal(), counts, out=np.zeros(len(counts)), where=counts > 0)
    return sorted(zip(test["classes"], accuracy.tolist(), counts.tolist()), key=lambda row: row[1])


def confused_pairs(test: dict, shown: int = 5) -> list[tuple[str, str, int]]:
    """The (true, predicted, videos) pairs of different classes most often confused."""
    matrix = np.array(test["confusion"])
    np.fill_diagonal(matrix, 0)
    pairs = [(test["classes"][row], test["classes"][column], int(matrix[row, column]))
             for row, column in zip(*np.nonzero(matrix))]
    return sorted(pairs, key=lambda pair: -pair[2])[:shown]


def figures(run: Run) -> dict[str, np.ndarray]:
    """The run's images by name: curves, confusion matrices (from their PNG files), retrieval strips."""
    images = {}
    for title, metrics in CURVES:
        for stage, curves in run.curves.items():
            image = draw_curves({metric: curves.get(metric, []) for metric in metrics}, f"{stage} {title}")
            if image is not None:
                images[f"{stage}_{title.replace(' ', '_')}"] = image
    for view in run.tests:
        suffix = ".tencrop" if view == "ten-crop" else ""
        confusion = cv2.imread(str(run.checkpoint.with_name(f"{Path(run.tests[view]['checkpoint']).name}{suffix}"
                                                            ".confusion.png")))
        if confusion is not None:
            images[f"confusion_{view}"] = confusion
    for index, example in enumerate((run.retrieval or {}).get("examples", [])):
        images[f"retrieval_{index}"] = retrieval_strip(example)
    return images


def summary_row(run: Run) -> dict:
    """The numbers the comparison table shows for one run."""
    state = run.state
    centre = run.tests.get("centre", {})
    retrieval = run.retrieval or {}
    pretrain = state["args"].get("pretrain") or "none"
    pretext = state["val_metrics"] if state["kind"] == "cpc" else {}
    return {"run": run.folder.name, "kind": "pretraining" if state["kind"] == "cpc" else "classifier",
            "pretrain": Path(pretrain).name if pretrain not in ("none", "random") else pretrain,
            "test_top1": centre.get("top1"), "test_top5": centre.get("top5"), "R@1": retrieval.get("R@1"),
            "probe_top1": retrieval.get("probe_top1"),
            **{key: pretext.get(key) for key in ("top1", "top1_reversed", "step_similarity")}}


def pretraining_of(run: Run) -> tuple[Path, dict] | None:
    """(path, state) of the pretraining behind the run: its own checkpoint, or the one a classifier was finetuned
    from when that file is still there and was validated; None otherwise."""
    if run.state["kind"] == "cpc":
        return (run.checkpoint, run.state) if run.state["val_metrics"] else None
    path = Path(run.state["args"].get("pretrain") or "random")
    if not path.is_file():
        return None
    pretrained = load(path)
    return (path, pretrained) if pretrained["kind"] == "cpc" and pretrained["val_metrics"] else None


def number(value) -> str:
    return "–" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def sections(run: Run, images: dict[str, np.ndarray]) -> list[tuple[str, list[list[str]], list[str]]]:
    """(heading, table rows, names of `images`) in the order the page shows them; a table's first row is its
    header."""
    state = run.state
    settings = [["setting", "value"], ["checkpoint", str(run.checkpoint)], ["epoch", str(state["epoch"])]]
    settings += [[key, str(value)] for key, value in {**state["model_config"], **state["args"]}.items()
                 if key not in ("csv_root", "log_root")]
    found = [("Settings", settings, [])]
    source = pretraining_of(run)
    if source is not None:
        path, pretrained = source
        pretext = [["pretext (last validation)", "value"], ["checkpoint", str(path)]]
        pretext += [[key, number(value)] for key, value in pretrained["val_metrics"].items()]
        warning = plateau_warning(pretrained["val_metrics"], pretrained["model_config"]["pred_step"], path,
                                  pretrained["args"]["color_aug"])
        if warning:
            pretext.append(["warning", warning])
        found.append(("Pretext" if path == run.checkpoint else "Pretrained from", pretext, []))
    found.append(("Curves", [], [name for name in images if not name.startswith(("confusion", "retrieval"))]))
    for view, test in run.tests.items():
        rows = [["test", "value"], ["view", view], ["top1", number(test["top1"])], ["top5", number(test["top5"])],
                ["videos", str(test["videos_tested"])], ["skipped", str(test["videos_skipped"])]]
        rows += [["most confused", f"{true} -> {predicted}: {videos}"] for true, predicted, videos in
                 confused_pairs(test)]
        rows += [[f"class {name}", f"{accuracy:.4f} of {videos}"] for name, accuracy, videos in per_class(test)]
        found.append((f"Test ({view})", rows, [f"confusion_{view}"] if f"confusion_{view}" in images else []))
    if run.retrieval is not None:
        rows = [["retrieval", "value"]] + [[key, number(run.retrieval[key])] for key in run.retrieval
                                           if key.startswith("R@") or key == "probe_top1"]
        found.append(("Retrieval (query, then its 5 nearest training videos; green: same class)", rows,
                      [name for name in images if name.startswith("retrieval")]))
    return found


def png_bytes(image: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise OSError("cannot encode a report image as PNG")
    return encoded.tobytes()


def html_table(rows: list[list[str]]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows[1:])
    return f"<table><tr>{head}</tr>{body}</table>"


def markdown_table(rows: list[list[str]]) -> str:
    if not rows:
        return ""
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def write_report(run: Run) -> Path:
    """report.html and report.md (with its images in report/) in the run's folder; returns the HTML's path."""
    images = figures(run)
    image_dir = run.folder / "report"
    image_dir.mkdir(exist_ok=True)
    page = [f"<h1>{html.escape(run.folder.name)}</h1>"]
    markdown = [f"# {run.folder.name}"]
    for heading, rows, names in sections(run, images):
        page += [f"<h2>{html.escape(heading)}</h2>", html_table(rows)]
        markdown += [f"## {heading}", markdown_table(rows)]
        for name in names:
            data = png_bytes(images[name])
            (image_dir / f"{name}.png").write_bytes(data)
            page.append(f'<img alt="{name}" src="data:image/png;base64,{base64.b64encode(data).decode()}">')
            markdown.append(f"![{name}](report/{name}.png)")
    style = "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}" \
            "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}img{display:block;margin:1em 0}</style>"
    html_path = run.folder / "report.html"
    html_path.write_text(f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(run.folder.name)}"
                         f"</title>{style}</head><body>{''.join(page)}</body></html>\n")
    (run.folder / "report.md").write_text("\n\n".join(markdown) + "\n")
    return html_path


def write_comparison(runs: list[Run], folder: Path) -> Path:
    """One table of every run's numbers: comparison.html and comparison.md in `folder`."""
    rows = [["run", *[title for title, _ in COMPARED]]]
    for run in runs:
        values = summary_row(run)
        rows.append([values["run"], *[number(values[key]) for _, key in COMPARED]])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "comparison.md").write_text("# Comparison\n\n" + markdown_table(rows) + "\n")
    path = folder / "comparison.html"
    path.write_text(f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>comparison</title></head><body>"
                    f"<h1>Comparison</h1>{html_table(rows)}</body></html>\n")
    return path


def report_run_of(checkpoint: Path) -> None:
    """After --test or --retrieval: the report of the checkpoint's run folder, when it sits in one."""
    if checkpoint.parent.name == "model":
        print(f"report: {write_report(collect(checkpoint.parent.parent))}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument("--out", type=Path, default=None,
                        help="where the comparison of several runs goes (default: the first run's parent folder)")
    args = parser.parse_args(argv)
    try:
        runs = [collect(run_dir) for run_dir in args.run_dirs]
    except CheckpointError as error:
        sys.exit(f"error: {error}")
    for run in runs:
        print(f"wrote {write_report(run)}")
    if len(runs) > 1:
        print(f"wrote {write_comparison(runs, args.out or runs[0].folder.parent)}")


if __name__ == "__main__":
    main()
