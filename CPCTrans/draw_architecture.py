"""Draws Architecture.png from the model as built: every shape in the figure is measured by a forward pass.

    python CPCTrans/draw_architecture.py [--img_dim 224 --num_seq 5 --pred_step 3 --out Architecture.png]
"""
import argparse
from pathlib import Path

import cv2
import numpy as np
import torch

from CPCTrans.cpc import FuturePredictor, dense_scores
from CPCTrans.runtime import REPO_ROOT

FONT = cv2.FONT_HERSHEY_SIMPLEX
COLORS = {"data": (235, 225, 205), "net": (200, 230, 250), "head": (210, 245, 215), "loss": (215, 215, 250)}


def measured_shapes(img_dim: int, num_seq: int, pred_step: int, batch: int = 2) -> dict[str, tuple]:
    """Runs one clip batch through the model and records the shape at each stage."""
    model = FuturePredictor(num_seq=num_seq, pred_step=pred_step).eval()
    shapes = {}

    def record(name):
        def hook(module, inputs, output):
            shapes.setdefault(name, tuple(output.shape))
        return hook

    hooks = [module.register_forward_hook(record(name)) for name, module in
             (("backbone", model.encoder.backbone), ("tokens", model.encoder.transformer), ("agg", model.agg))]
    clips = torch.randn(batch, num_seq, 3, img_dim, img_dim)
    with torch.no_grad():
        predictions, targets = model(clips)
        scores = dense_scores(predictions, targets)
    for hook in hooks:
        hook.remove()
    shapes.update(input=tuple(clips.shape), predictions=tuple(predictions.shape), targets=tuple(targets.shape),
                  scores=tuple(scores.shape))
    return shapes


def fmt(shape: tuple, batch: int = 2) -> str:
    return " x ".join("B" if i == 0 and size == batch else str(size) for i, size in enumerate(shape))


def box(canvas, center_x: int, top: int, lines: list[str], color, width: int = 430) -> tuple[int, int]:
    """A rounded-ish box with centred text lines; returns (top, bottom)."""
    height = 16 + 24 * len(lines)
    x1, x2 = center_x - width // 2, center_x + width // 2
    cv2.rectangle(canvas, (x1, top), (x2, top + height), color, -1)
    cv2.rectangle(canvas, (x1, top), (x2, top + height), (60, 60, 60), 2)
    for row, text in enumerate(lines):
        scale, thickness = (0.58, 2) if row == 0 else (0.5, 1)
        (text_w, _), _ = cv2.getTextSize(text, FONT, scale, thickness)
        cv2.putText(canvas, text, (center_x - text_w // 2, top + 28 + 24 * row), FONT, scale, (20, 20, 20),
                    thickness, cv2.LINE_AA)
    return top, top + height


def arrow(canvas, start: tuple[int, int], end: tuple[int, int], tip: float = 12.0) -> None:
    length = max(1.0, float(np.hypot(end[0] - start[0], end[1] - start[1])))
    cv2.arrowedLine(canvas, start, end, (60, 60, 60), 2, cv2.LINE_AA, tipLength=tip / length)


def draw(shapes: dict, num_seq: int, pred_step: int) -> np.ndarray:
    canvas = np.full((1060, 1000, 3), 255, np.uint8)
    middle, left, right = 500, 270, 730
    context = num_seq - pred_step
    _, b = box(canvas, middle, 60, [f"Input clip {fmt(shapes['input'])}",
                                    f"{num_seq} frames, ds apart; augmented on the device"], COLORS["data"])
    arrow(canvas, (middle, b), (middle, b + 30))
    _, b = box(canvas, middle, b + 30, ["2D ResNet18 trunk, per frame",
                                        "stages 64-128-256-256, last block without ReLU",
                                        f"-> {fmt((shapes['input'][0], num_seq) + shapes['backbone'][1:])}"],
               COLORS["net"])
    arrow(canvas, (middle, b), (middle, b + 30))
    _, b = box(canvas, middle, b + 30, [f"Transformer encoder over {shapes['tokens'][1]} tokens",
                                        "2 layers, 4 heads, d 256, FFN 2048, pre-norm",
                                        "no positional encoding, attention over all frames",
                                        f"-> {fmt(shapes['tokens'])}"], COLORS["net"])
    split = b + 40
    arrow(canvas, (middle, b), (left, split))
    arrow(canvas, (middle, b), (right, split))
    _, lb = box(canvas, left, split, [f"Context: first {context} frames", "ReLU"], COLORS["head"], 400)
    _, rb = box(canvas, right, split, [f"Targets: last {pred_step} frames", fmt(shapes["targets"])],
                COLORS["head"], 400)
    arrow(canvas, (left, lb), (left, lb + 30))
    _, lb = box(canvas, left, lb + 30, ["ConvGRU, 1x1 kernels, hidden 256", f"states {fmt(shapes['agg'])}",
                                        "last state c_t"], COLORS["head"], 400)
    arrow(canvas, (left, lb), (left, lb + 30))
    _, lb = box(canvas, left, lb + 30, ["Predictor: 1x1 conv, ReLU, 1x1 conv",
                                        f"{pred_step} steps, ReLU(z) fed back into the GRU",
                                        f"-> {fmt(shapes['predictions'])}"], COLORS["head"], 400)
    bottom = max(lb, rb) + 50
    arrow(canvas, (left, lb), (middle - 60, bottom))
    arrow(canvas, (right, rb), (middle + 60, bottom))
    _, steps, _, height, width = shapes["predictions"]
    rows = f"(B*{steps}*{height * width})"
    _, end = box(canvas, middle, bottom, ["Dense contrastive scores",
                                 f"every prediction . every target: {rows} x {rows}",
                                 "cross-entropy, positive = same video, step, position",
                                 "negatives: spatial / temporal / other video"], COLORS["loss"], 520)
    cv2.putText(canvas, "CPCTrans pretraining (shapes measured by a forward pass, B = batch)", (30, 35), FONT, 0.7,
                (20, 20, 20), 2, cv2.LINE_AA)
    return canvas[:end + 30]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Draw Architecture.png from the model as built")
    parser.add_argument("--img_dim", default=224, type=int)
    parser.add_argument("--num_seq", default=5, type=int)
    parser.add_argument("--pred_step", default=3, type=int)
    parser.add_argument("--out", default=REPO_ROOT / "Architecture.png", type=Path)
    args = parser.parse_args(argv)
    image = draw(measured_shapes(args.img_dim, args.num_seq, args.pred_step), args.num_seq, args.pred_step)
    if not cv2.imwrite(str(args.out), image):
        raise SystemExit(f"error: {args.out}: cannot write the image")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
