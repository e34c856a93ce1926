"""Batched clip augmentation on the training device (docs/method.md, "Augmentation").

Clips arrive as uint8 (B, N, 3, H, W), possibly zero-padded to the largest frame of the batch,
with each clip's real (height, width). Random parameters are drawn on the CPU (a few numbers
per clip or frame), then applied to the whole batch at once: one roi_align does every crop, color
operations are vectorised over frames with per-frame factors.

As in the reference, each crop becomes a 224 x 224 image first, which is then scaled to `img_dim` by
nearest neighbour (resize "nearest", PIL's NEAREST pixel for pixel); resize "bilinear" instead scales
the crop box to `img_dim` in one antialiased step. The reference's grayscale ("RandomGray") copies one
random RGB channel to all three (gray "channel"); gray "luminance" uses the ITU-R 601 weights.
"""
import math
from dataclasses import dataclass, replace
from functools import lru_cache
from itertools import accumulate

import torch
from torchvision.ops import roi_align
from torchvision.transforms.v2 import functional as TF

from CPCTrans.device import to_device

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_SIZE = 224
RESIZE_KINDS = ("nearest", "bilinear")
GRAY_KINDS = ("channel", "luminance")


@dataclass(frozen=True)
class Recipe:
    """What to draw for a clip and how to apply it. `per_frame_color`: grayscale and jitter drawn per frame, not
    per clip; `gray` and `resize` as in the module's docstring."""

    crop: str  # "random": CROP_SIZE at a uniform position; "random_sized": area/aspect jitter; "center"
    sized_crop_p: float = 1.0
    flip: bool = False
    gray_p: float = 0.0
    jitter: tuple[float, float, float, float] | None = None  # brightness, contrast, saturation, hue
    jitter_p: float = 0.0
    per_frame_color: bool = False
    gray: str = "channel"
    resize: str = "nearest"


PRETRAIN = Recipe(crop="random", flip=True, gray_p=0.5, jitter=(0.5, 0.5, 0.5, 0.25), jitter_p=1.0,
                  per_frame_color=True)
FINETUNE_TRAIN = Recipe(crop="random_sized", sized_crop_p=1.0, flip=True, jitter=(0.5, 0.5, 0.5, 0.25), jitter_p=0.3)
FINETUNE_VAL = Recipe(crop="random_sized", sized_crop_p=0.3, flip=True, jitter=(0.2, 0.2, 0.2, 0.1), jitter_p=0.3)
TEST = Recipe(crop="center")
COLOR_AUG_KINDS = ("frame", "clip")


def _check(value: str, kinds: tuple[str, ...], what: str) -> None:
    if value not in kinds:
        raise ValueError(f"{what} must be one of {kinds}, got {value!r}")


def finetuning_recipes(color_jitter: bool, resize: str = "nearest") -> tuple[Recipe, Recipe]:
    """Finetuning's training and validation augmentation, with the reference's color jitter or with crop and
    flip only."""
    _check(resize, RESIZE_KINDS, "resize")
    jitter_p = {} if color_jitter else {"jitter_p": 0.0}
    return replace(FINETUNE_TRAIN, resize=resize, **jitter_p), replace(FINETUNE_VAL, resize=resize, **jitter_p)


def pretraining_recipe(color_aug: str, gray: str = "channel", resize: str = "nearest") -> Recipe:
    """The pretraining augmentation, its grayscale and color jitter drawn per frame (the reference) or per clip."""
    _check(color_aug, COLOR_AUG_KINDS, "color augmentation")
    _check(gray, GRAY_KINDS, "grayscale")
    _check(resize, RESIZE_KINDS, "resize")
    return replace(PRETRAIN, per_frame_color=color_aug == "frame", gray=gray, resize=resize)


def evaluation_recipe(resize: str = "nearest") -> Recipe:
    """The test view: the centre crop."""
    _check(resize, RESIZE_KINDS, "resize")
    return replace(TEST, resize=resize)


@dataclass
class AugmentParams:
    """Everything random about one batch; frame-level fields are (B, N)."""

    boxes: torch.Tensor  # (B, 4) x1, y1, x2, y2 in pixels
    flip: torch.Tensor  # (B,) bool
    gray: torch.Tensor  # (B, N) bool
    gray_channel: torch.Tensor  # (B, N) the RGB channel a "channel" grayscale copies
    jitter_on: torch.Tensor  # (B, N) bool
    factors: torch.Tensor  # (B, N, 4) brightness, contrast, saturation, hue shift
    order: torch.Tensor  # (B, N, 4) a permutation of the four jitter operations


def _uniform(low, high, shape, generator):
    return low + (high - low) * torch.rand(shape, generator=generator)


def _center_boxes(sizes: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
    """Centred squares; a half-pixel offset rounds to even, as the reference's round() does."""
    heights, widths = sizes[:, 0].float(), sizes[:, 1].float()
    x1 = ((widths - side) / 2).round()
    y1 = ((heights - side) / 2).round()
    return torch.stack([x1, y1, x1 + side, y1 + side], dim=1)


def _random_fixed_boxes(sizes: torch.Tensor, generator) -> torch.Tensor:
    heights, widths = sizes[:, 0], sizes[:, 1]
    side = _crop_side(sizes)
    x1 = (torch.rand(len(sizes), generator=generator) * (widths - side + 1)).floor()
    y1 = (torch.rand(len(sizes), generator=generator) * (heights - side + 1)).floor()
    return torch.stack([x1, y1, x1 + side, y1 + side], dim=1).float()


def _crop_side(sizes: torch.Tensor) -> torch.Tensor:
    """CROP_SIZE, or the short side of a smaller frame."""
    return torch.minimum(torch.full((len(sizes),), CROP_SIZE), sizes.min(dim=1).values).float()


def _fixed_center_boxes(sizes: torch.Tensor) -> torch.Tensor:
    """The centre CROP_SIZE square (the short side's, in a smaller frame)."""
    return _center_boxes(sizes, _crop_side(sizes))


def _random_sized_boxes(sizes: torch.Tensor, p: float, generator, attempts: int = 10) -> torch.Tensor:
    """With probability p: area 0.5-1 of the frame, aspect 3/4-4/3, the first of `attempts` draws that fits, or
    the short side's centre square when none fits; otherwise the centre CROP_SIZE square (the reference's
    RandomSizedCrop)."""
    count = len(sizes)
    heights, widths = sizes[:, 0:1].float(), sizes[:, 1:2].float()
    area = _uniform(0.5, 1.0, (count, attempts), generator) * heights * widths
    aspect = _uniform(3 / 4, 4 / 3, (count, attempts), generator)
    crop_w = (area * aspect).sqrt().round()
    crop_h = (area / aspect).sqrt().round()
    swap = torch.rand(count, attempts, generator=generator) < 0.5
    crop_w, crop_h = torch.where(swap, crop_h, crop_w), torch.where(swap, crop_w, crop_h)
    fits = (crop_w <= widths) & (crop_h <= heights)
    first = fits.float().argmax(dim=1, keepdim=True)
    crop_w, crop_h = crop_w.gather(1, first), crop_h.gather(1, first)
    x1 = (torch.rand(count, 1, generator=generator) * (widths - crop_w + 1)).floor()
    y1 = (torch.rand(count, 1, generator=generator) * (heights - crop_h + 1)).floor()
    sized = torch.cat([x1, y1, x1 + crop_w, y1 + crop_h], dim=1)
    sized = torch.where(fits.any(dim=1, keepdim=True), sized,
                        _center_boxes(sizes, torch.minimum(heights, widths).flatten()))
    applied = torch.rand(count, generator=generator) < p
    return torch.where(applied[:, None], sized, _fixed_center_boxes(sizes))


def sample_params(recipe: Recipe, sizes: torch.Tensor, num_frames: int,
                  generator: torch.Generator | None = None) -> AugmentParams:
    """Draws one batch's parameters on the CPU. `sizes` is (B, 2): each clip's frame height and width."""
    count = len(sizes)
    if recipe.crop == "random":
        boxes = _random_fixed_boxes(sizes, generator)
    elif recipe.crop == "random_sized":
        boxes = _random_sized_boxes(sizes, recipe.sized_crop_p, generator)
    else:
        boxes = _fixed_center_boxes(sizes)
    flip = (torch.rand(count, generator=generator) < 0.5) & recipe.flip
    color_shape = (count, num_frames) if recipe.per_frame_color else (count, 1)
    gray = torch.rand(color_shape, generator=generator) < recipe.gray_p
    jitter_on = torch.rand(color_shape, generator=generator) < recipe.jitter_p
    b, c, s, h = recipe.jitter or (0.0, 0.0, 0.0, 0.0)
    factors = torch.stack([_uniform(max(0.0, 1 - b), 1 + b, color_shape, generator),
                           _uniform(max(0.0, 1 - c), 1 + c, color_shape, generator),
                           _uniform(max(0.0, 1 - s), 1 + s, color_shape, generator),
                           _uniform(-h, h, color_shape, generator)], dim=-1)
    order = torch.rand((*color_shape, 4), generator=generator).argsort(dim=-1)
    gray_channel = torch.randint(3, color_shape, generator=generator)
    frames = (count, num_frames)
    return AugmentParams(boxes=boxes, flip=flip, gray=gray.expand(frames), gray_channel=gray_channel.expand(frames),
                         jitter_on=jitter_on.expand(frames), factors=factors.expand(*frames, 4),
                         order=order.expand(*frames, 4))


def unit_frames(clips: torch.Tensor) -> torch.Tensor:
    """uint8 clips (B, N, 3, H, W), stored in any order -> float frames (B*N, 3, H, W) in [0, 1], stored
    channel-first. Loaders store frames channel-last (data.stack_frames); the reordering is done here, on
    the uint8 values and on the training device."""
    return clips.flatten(0, 1).contiguous().float().div_(255)


def _roi_resize(frames: torch.Tensor, frame_index: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crops box i of frame frame_index[i] (CPU tensors) and resizes it to size x size, bilinear.

    Downscaling averages several samples per output pixel, like an antialiased resize.
    """
    largest_side = float((boxes[:, 2:] - boxes[:, :2]).max())
    samples = max(1, int(-(-largest_side // size)))
    rois = to_device(torch.cat([frame_index[:, None].to(boxes.dtype), boxes], dim=1), frames.device, frames.dtype)
    return roi_align(frames, rois, output_size=size, spatial_scale=1.0, sampling_ratio=samples, aligned=True)


@lru_cache
def nearest_indices(source: int, size: int) -> torch.Tensor:
    """For each of `size` output pixels, the one of `source` input pixels PIL's NEAREST takes: floor((i + 0.5) *
    scale), the positions summed step by step in double precision as PIL sums them (products differ at some sizes,
    e.g. 224 -> 196)."""
    scale = source / size
    return torch.tensor([math.floor(position) for position in accumulate([scale / 2] + [scale] * (size - 1))])


def nearest_resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Square images (F, C, S, S) -> (F, C, size, size) by nearest neighbour, PIL's pixels."""
    index = to_device(nearest_indices(images.shape[-1], size), images.device)
    return images.index_select(-1, index).index_select(-2, index)


def _crops(frames: torch.Tensor, frame_index: torch.Tensor, boxes: torch.Tensor, size: int,
           resize: str) -> torch.Tensor:
    """Box i of frame frame_index[i] -> size x size: through a CROP_SIZE image then nearest (resize "nearest"),
    or in one bilinear step."""
    if resize == "bilinear" or size == CROP_SIZE:
        return _roi_resize(frames, frame_index, boxes, size)
    return nearest_resize(_roi_resize(frames, frame_index, boxes, CROP_SIZE), size)


def crop_resize(frames: torch.Tensor, boxes: torch.Tensor, frames_per_box: int, size: int,
                resize: str = "nearest") -> torch.Tensor:
    """Float frames (B*N, 3, H, W), one CPU box per clip -> (B*N, 3, size, size)."""
    return _crops(frames, torch.arange(len(frames)), boxes.repeat_interleave(frames_per_box, dim=0), size, resize)


def ten_crop_boxes(sizes: torch.Tensor) -> torch.Tensor:
    """(B, 5, 4): the four corner squares (top-left, top-right, bottom-left, bottom-right) and the centre one."""
    side = _crop_side(sizes)
    right, bottom = sizes[:, 1].float() - side, sizes[:, 0].float() - side
    zero = torch.zeros_like(side)
    corners = [torch.stack([x1, y1, x1 + side, y1 + side], dim=1)
               for y1, x1 in ((zero, zero), (zero, right), (bottom, zero), (bottom, right))]
    return torch.stack([*corners, _center_boxes(sizes, side)], dim=1)


def ten_crop(clips: torch.Tensor, sizes: torch.Tensor, img_dim: int, resize: str = "nearest") -> torch.Tensor:
    """Test-time views: uint8 clips (B, N, 3, H, W) -> normalised (B*10, N, 3, img_dim, img_dim), ordered
    (clip, view). Views 0-4 are the ten_crop_boxes crops, views 5-9 the same flipped; crop and flip are
    the same for every frame of a clip."""
    batch, steps = clips.shape[:2]
    frames = unit_frames(clips)
    boxes = ten_crop_boxes(sizes)
    # One roi per (clip, view, frame): frame b*N + n with box (b, v).
    frame_index = (torch.arange(batch)[:, None, None] * steps + torch.arange(steps)[None, None, :]).expand(-1, 5, -1)
    views = _crops(frames, frame_index.flatten(), boxes[:, :, None].expand(-1, -1, steps, -1).reshape(-1, 4),
                   img_dim, resize)
    views = views.view(batch, 5, steps, 3, img_dim, img_dim)
    return normalize(torch.cat([views, views.flip(-1)], dim=1)).flatten(0, 1)


def _blend(image: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor * image + (1 - factor) * other).clamp_(0, 1)


def _rgb_to_hsv(image: torch.Tensor) -> torch.Tensor:
    red, green, blue = image.unbind(dim=-3)
    value = image.amax(dim=-3)
    chroma = value - image.amin(dim=-3)
    safe_chroma = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    saturation = torch.where(value > 0, chroma / torch.where(value > 0, value, torch.ones_like(value)), 0)
    hue = torch.where(value == red, (green - blue) / safe_chroma,
                      torch.where(value == green, 2 + (blue - red) / safe_chroma, 4 + (red - green) / safe_chroma))
    hue = torch.where(chroma > 0, (hue / 6) % 1.0, 0)
    return torch.stack([hue, saturation, value], dim=-3)


def _hsv_to_rgb(image: torch.Tensor) -> torch.Tensor:
    hue, saturation, value = image.unbind(dim=-3)
    # Each channel is v - v*s*clamp(min(k, 4 - k), 0, 1), with k = (n + 6h) mod 6 and n = 5, 3, 1.
    offsets = torch.arange(5, 0, -2, device=image.device, dtype=image.dtype).view(3, 1, 1)  # made there: no copy
    k = (offsets + 6 * hue.unsqueeze(-3)) % 6
    ramp = torch.minimum(k, 4 - k).clamp(0, 1)
    return value.unsqueeze(-3) * (1 - saturation.unsqueeze(-3) * ramp)


def adjust_hue(image: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    hsv = _rgb_to_hsv(image)
    hue = (hsv[:, 0:1] + shift) % 1.0
    return _hsv_to_rgb(torch.cat([hue, hsv[:, 1:]], dim=1))


def _grayscale(image: torch.Tensor) -> torch.Tensor:
    return TF.rgb_to_grayscale(image, num_output_channels=1)


def _gray_frames(frames: torch.Tensor, channel: torch.Tensor | None) -> torch.Tensor:
    """Frames (F, 3, H, W) -> their grayscale (F, 3, H, W): with `channel` (F,) on the frames' device, that RGB
    channel copied to all three; without it, luminance."""
    if channel is None:
        return _grayscale(frames).expand_as(frames)
    return frames.gather(1, channel.view(-1, 1, 1, 1).expand(-1, 1, *frames.shape[2:])).expand_as(frames)


def _brightness(image, factor):
    return (image * factor).clamp_(0, 1)


def _contrast(image, factor):
    return _blend(image, _grayscale(image).mean(dim=(-3, -2, -1), keepdim=True), factor)


def _saturation(image, factor):
    return _blend(image, _grayscale(image), factor)


JITTER_OPS = (_brightness, _contrast, _saturation, adjust_hue)


def _per_frame(chosen: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    return torch.where(chosen.view(-1, 1, 1, 1), new, old)


def color_ops(frames: torch.Tensor, packed: torch.Tensor, jitter: bool, channel_gray: bool) -> torch.Tensor:
    """Flip, grayscale and color jitter of cropped frames (F, 3, S, S), with the parameters of pack_color_params.

    Every frame goes through every operation at every position of the jitter's order and keeps the result its
    draws choose. No shape depends on the draws: torch.compile fuses the lot into a few kernels (ClipAugment's
    `compiled`), and nothing waits for the host to pick frames out.
    """
    flip, gray, jitter_on = (packed[:, column] > 0.5 for column in range(3))
    factors, order = packed[:, 3:7], packed[:, 7:11]
    channel = packed[:, 11].long() if channel_gray else None
    frames = _per_frame(flip, frames.flip(-1), frames)
    frames = _per_frame(gray, _gray_frames(frames, channel), frames)
    if jitter:
        for position in range(order.shape[1]):
            jittered = frames
            for index, op in enumerate(JITTER_OPS):
                chosen = jitter_on & (order[:, position] == index)
                jittered = _per_frame(chosen, op(frames, factors[:, index].view(-1, 1, 1, 1)), jittered)
            frames = jittered
    return frames


def pack_color_params(params: AugmentParams, steps: int) -> torch.Tensor:
    """(B*N, 12) floats on the host, one row per frame: flip, grayscale, jitter on, four factors, four operations
    in order, the grayscale's channel. One copy takes them to the device."""
    return torch.cat([params.flip.repeat_interleave(steps)[:, None], params.gray.flatten()[:, None],
                      params.jitter_on.flatten()[:, None], params.factors.flatten(0, 1),
                      params.order.flatten(0, 1), params.gray_channel.flatten()[:, None]], dim=1).float()


def apply_params(clips: torch.Tensor, params: AugmentParams, img_dim: int, recipe: Recipe,
                 color=color_ops) -> torch.Tensor:
    """uint8 clips (B, N, 3, H, W) on any device -> normalised float (B, N, 3, img_dim, img_dim).

    `color`: color_ops, or a compiled version of it."""
    batch, steps = clips.shape[:2]
    frames = crop_resize(unit_frames(clips), params.boxes, steps, img_dim, recipe.resize)
    packed = to_device(pack_color_params(params, steps), frames.device)
    frames = color(frames, packed, recipe.jitter is not None, recipe.gray == "channel")
    return normalize(frames).view(batch, steps, 3, img_dim, img_dim)


def channel_constant(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """(3, 1, 1) on `device`. Not torch.tensor(..., device=): its copy would hold the thread that prepares
    batches ahead (prefetch.py) until the GPU caught up."""
    return to_device(torch.tensor(values).view(-1, 1, 1), device)


def normalize(frames: torch.Tensor) -> torch.Tensor:
    """[0, 1] frames (..., 3, H, W) -> ImageNet-normalised."""
    return (frames - channel_constant(IMAGENET_MEAN, frames.device)) / channel_constant(IMAGENET_STD, frames.device)


class ClipAugment:
    """The augmentation of one stage: draws parameters with its own generator, applies them on the clips' device.

    `compiled`: the color operations go through torch.compile (same draws, same formulas), a few fused kernels per
    batch instead of some hundred small ones."""

    def __init__(self, recipe: Recipe, img_dim: int, seed: int | None = None, compiled: bool = False):
        self.recipe = recipe
        self.img_dim = img_dim
        self.color = torch.compile(color_ops) if compiled else color_ops
        self.generator = torch.Generator()
        if seed is not None:
            self.generator.manual_seed(seed)

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def __call__(self, clips: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        params = sample_params(self.recipe, sizes, clips.shape[1], self.generator)
        return apply_params(clips, params, self.img_dim, self.recipe, self.color)


def denormalize(frames: torch.Tensor) -> torch.Tensor:
    """Normalised frames (..., 3, H, W) -> [0, 1], for logging."""
    return (frames * channel_constant(IMAGENET_STD, frames.device)
            + channel_constant(IMAGENET_MEAN, frames.device)).clamp(0, 1)
