"""How far the loader's decoding and the augmentation's crop-and-scale are from the reference's pixels.

The reference decodes a frame with PIL, crops 224 x 224 and scales the crop to --img_dim with PIL's NEAREST; this
compares that with our loader's decoding (CPCTrans.data.decode_frames) and CPCTrans.augment.crop_resize on the same
random crops, for each --resize choice, and prints a table.

    python CPCTrans/resize_fidelity.py --frame_root demo_output/frames --img_dim 128 196 112
"""
import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from CPCTrans.augment import CROP_SIZE, RESIZE_KINDS, crop_resize
from CPCTrans.data import decode_frames


def reference_pixels(frame: np.ndarray, x1: int, y1: int, img_dim: int) -> np.ndarray:
    crop = Image.fromarray(frame).crop((x1, y1, x1 + CROP_SIZE, y1 + CROP_SIZE))
    return np.asarray(crop.resize((img_dim, img_dim), Image.NEAREST))


def our_pixels(frames: torch.Tensor, x1: int, y1: int, img_dim: int, resize: str) -> np.ndarray:
    box = torch.tensor([[x1, y1, x1 + CROP_SIZE, y1 + CROP_SIZE]], dtype=torch.float32)
    return crop_resize(frames, box, 1, img_dim, resize)[0].round().byte().permute(1, 2, 0).numpy()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frame_root", required=True, type=Path, help="frames written by extract_frame.py")
    parser.add_argument("--img_dim", type=int, nargs="+", default=[128, 196, 112])
    parser.add_argument("--frames", type=int, default=200, help="frames compared, spread over the folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    files = sorted(args.frame_root.rglob("image_*.jpg"))
    if not files:
        parser.error(f"{args.frame_root}: no image_*.jpg below it; run ProcessData/extract_frame.py first")
    files = files[::max(1, len(files) // args.frames)][:args.frames]
    generator = np.random.default_rng(args.seed)
    print(f"{len(files)} frames from {args.frame_root}; differences in 8-bit levels")
    print("| img_dim | resize | mean abs difference | max | pixels that differ |")
    print("|---|---|---|---|---|")
    for img_dim in args.img_dim:
        differences = {resize: [] for resize in RESIZE_KINDS}
        for path in files:
            frame = np.array(Image.open(path).convert("RGB"))
            ours = decode_frames([str(path)]).float()
            height, width = frame.shape[:2]
            x1, y1 = int(generator.integers(width - CROP_SIZE + 1)), int(generator.integers(height - CROP_SIZE + 1))
            expected = reference_pixels(frame, x1, y1, img_dim).astype(int)
            for resize in RESIZE_KINDS:
                differences[resize].append(np.abs(our_pixels(ours, x1, y1, img_dim, resize) - expected))
        for resize, found in differences.items():
            found = np.stack(found)
            print(f"| {img_dim} | {resize} | {found.mean():.2f} | {found.max()} | {(found > 0).mean():.1%} |")


if __name__ == "__main__":
    main()
