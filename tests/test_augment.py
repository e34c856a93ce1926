"""Batched augmentation: what is shared by a clip's frames, what is drawn per frame, and the ranges."""
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from CPCTrans import augment
from CPCTrans.augment import FINETUNE_TRAIN, FINETUNE_VAL, PRETRAIN, TEST, apply_params, sample_params


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def textured_clip(frames=4, height=240, width=320, seed=0):
    frame = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator(seed))
    return frame.expand(frames, -1, -1, -1).clone()


def test_crop_and_flip_are_identical_across_a_clips_frames():
    clips = torch.stack([textured_clip(seed=1), textured_clip(seed=2)])
    sizes = torch.tensor([[240, 320], [240, 320]])
    for recipe in (PRETRAIN, FINETUNE_TRAIN):
        geometry_only = augment.Recipe(crop=recipe.crop, sized_crop_p=recipe.sized_crop_p, flip=True)
        for seed in range(5):
            params = sample_params(geometry_only, sizes, 4, generator(seed))
            out = apply_params(clips, params, 64, geometry_only)
            assert torch.allclose(out[:, 1:], out[:, :1].expand_as(out[:, 1:]))


def test_pretraining_draws_grayscale_and_jitter_per_frame():
    params = sample_params(PRETRAIN, torch.tensor([[240, 320]] * 64), 5, generator())
    assert params.jitter_on.all()
    assert (params.factors[:, 1:] != params.factors[:, :1]).any(dim=2).all(), "factors must differ across frames"
    assert (params.gray != params.gray[:, :1]).any(), "grayscale must be drawn per frame"
    assert (params.order != params.order[:, :1]).any()
    clips = textured_clip(frames=5)[None]
    out = apply_params(clips, sample_params(PRETRAIN, torch.tensor([[240, 320]]), 5, generator(3)), 64, PRETRAIN)
    assert not torch.allclose(out[:, 0], out[:, 1])


def test_pretraining_color_drawn_per_clip_shares_one_draw_with_the_same_distribution():
    assert augment.pretraining_recipe("frame") == PRETRAIN
    count = 4000
    params = sample_params(augment.pretraining_recipe("clip"), torch.tensor([[240, 320]] * count), 5, generator())
    for drawn in (params.gray, params.jitter_on, params.factors, params.order):
        assert (drawn == drawn[:, :1]).all(), "one color draw for all frames of a clip"
    assert params.gray[:, 0].float().mean() == pytest.approx(0.5, abs=0.03)
    # brightness, contrast and saturation factors in 1 +- 0.5, the hue shift in 0 +- 0.25
    for factor, centre, spread in zip(params.factors[:, 0].unbind(-1), (1.0, 1.0, 1.0, 0.0), (0.5, 0.5, 0.5, 0.25)):
        assert factor.min() >= centre - spread and factor.max() <= centre + spread
        assert factor.max() - factor.min() > 1.9 * spread
    with pytest.raises(ValueError, match="color augmentation"):
        augment.pretraining_recipe("video")


def test_finetuning_color_is_consistent_across_the_clip():
    params = sample_params(FINETUNE_TRAIN, torch.tensor([[240, 320]] * 64), 7, generator())
    assert (params.factors == params.factors[:, :1]).all()
    assert (params.jitter_on == params.jitter_on[:, :1]).all()
    assert not params.gray.any()


def test_parameter_distributions_match_the_reference():
    count = 20000
    params = sample_params(PRETRAIN, torch.tensor([[240, 320]] * count), 5, generator())
    assert params.flip.float().mean() == pytest.approx(0.5, abs=0.02)
    assert params.gray.float().mean() == pytest.approx(0.5, abs=0.02)
    brightness, contrast, saturation, hue = params.factors.unbind(-1)
    for factor in (brightness, contrast, saturation):
        assert factor.min() >= 0.5 and factor.max() <= 1.5
    assert hue.min() >= -0.25 and hue.max() <= 0.25
    x1, y1, x2, y2 = params.boxes.unbind(1)
    assert ((x2 - x1) == 224).all() and ((y2 - y1) == 224).all()
    assert x1.min() == 0 and x1.max() == 320 - 224 and y1.max() == 240 - 224
    assert torch.bincount(x1.long(), minlength=97).float().std() / (count / 97) < 0.15
    first_ops = torch.bincount(params.order[:, 0, 0], minlength=4).float() / count
    assert torch.allclose(first_ops, torch.full((4,), 0.25), atol=0.02)


def test_color_jitter_applies_each_frames_operations_in_its_own_order_like_torchvision():
    """Frame by frame, the batched jitter equals torchvision's four functional operations applied one after
    another in the order and with the factors drawn for that frame; frames drawn without jitter are untouched."""
    recipe = augment.Recipe(crop="center", jitter=(0.5, 0.5, 0.5, 0.25), jitter_p=0.7, per_frame_color=True,
                            resize="bilinear")
    clips = torch.randint(0, 256, (6, 4, 3, 16, 16), dtype=torch.uint8, generator=generator())
    params = sample_params(recipe, torch.tensor([[16, 16]] * 6), 4, generator(1))
    jittered = augment.denormalize(apply_params(clips, params, 16, recipe)).flatten(0, 1)
    assert 0 < params.jitter_on.sum() < params.jitter_on.numel()
    operations = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    drawn = zip(params.jitter_on.flatten(), params.factors.flatten(0, 1), params.order.flatten(0, 1))
    for frame, out, (frame_on, frame_factors, frame_order) in zip(clips.flatten(0, 1).float() / 255, jittered, drawn):
        expected = frame
        for op_index in frame_order.tolist() if frame_on else []:
            expected = operations[op_index](expected, float(frame_factors[op_index]))
        assert torch.allclose(out, expected, atol=1e-5)


def test_finetuning_without_color_jitter_draws_the_same_crops_and_flips_and_no_color():
    sizes = torch.tensor([[240, 320]] * 4000)
    assert augment.finetuning_recipes(True) == (FINETUNE_TRAIN, FINETUNE_VAL)
    for jittered, plain in zip(augment.finetuning_recipes(True), augment.finetuning_recipes(False)):
        with_color, without = (sample_params(recipe, sizes, 5, generator()) for recipe in (jittered, plain))
        assert with_color.jitter_on[:, 0].float().mean() == pytest.approx(0.3, abs=0.03)
        assert not without.jitter_on.any() and not without.gray.any()
        assert torch.equal(without.boxes, with_color.boxes) and torch.equal(without.flip, with_color.flip)


def test_random_sized_crops_keep_area_and_aspect_in_range():
    params = sample_params(FINETUNE_TRAIN, torch.tensor([[240, 320]] * 5000), 5, generator())
    width = params.boxes[:, 2] - params.boxes[:, 0]
    height = params.boxes[:, 3] - params.boxes[:, 1]
    area = width * height / (240 * 320)
    assert area.min() >= 0.49 and area.max() <= 1.0
    assert (params.boxes[:, 2] <= 320).all() and (params.boxes[:, 3] <= 240).all()
    assert (params.boxes[:, :2] >= 0).all()


def test_test_crop_is_the_centre_224_resized():
    frame = torch.zeros(1, 1, 3, 240, 320, dtype=torch.uint8)
    frame[..., 8:232, 48:272] = 255
    out = apply_params(frame, sample_params(TEST, torch.tensor([[240, 320]]), 1, generator()), 112, TEST)
    white = augment.denormalize(out[0, 0])
    assert torch.allclose(white, torch.ones_like(white), atol=1e-5)


def test_crop_resize_is_exact_without_scaling():
    frames = torch.rand(2, 3, 240, 320)
    boxes = torch.tensor([[10.0, 5.0, 234.0, 229.0]])
    out = augment.crop_resize(frames, boxes, 2, 224)
    assert torch.allclose(out, frames[:, :, 5:229, 10:234], atol=1e-5)


def test_ten_crop_gives_corners_centre_and_their_mirror_images():
    clips = torch.stack([textured_clip(frames=2, seed=3), textured_clip(frames=2, seed=4)])
    sizes = torch.tensor([[240, 320], [240, 320]])
    views = augment.ten_crop(clips, sizes, 224).view(2, 10, 2, 3, 224, 224)
    frames = augment.normalize(clips.float() / 255)
    corners = [frames[..., :224, :224], frames[..., :224, 96:], frames[..., 16:, :224], frames[..., 16:, 96:]]
    for view, expected in enumerate(corners):
        assert torch.allclose(views[:, view], expected, atol=1e-4), view
    centre = apply_params(clips, sample_params(TEST, sizes, 2, generator()), 224, TEST)
    assert torch.allclose(views[:, 4], centre, atol=1e-4)
    assert torch.equal(views[:, 5:], views[:, :5].flip(-1))


def test_hue_shift_of_a_full_turn_is_identity_and_half_turn_gives_complement():
    image = torch.rand(3, 3, 8, 8)
    assert torch.allclose(augment.adjust_hue(image, torch.ones(3, 1, 1, 1)), image, atol=1e-5)
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    cyan = augment.adjust_hue(red, torch.full((1, 1, 1, 1), 0.5))
    assert torch.allclose(cyan.flatten(), torch.tensor([0.0, 1.0, 1.0]), atol=1e-5)


def test_padded_clips_are_cropped_inside_their_own_frame():
    clips = torch.zeros(2, 2, 3, 240, 320, dtype=torch.uint8)
    clips[1, :, :, :, :224] = 200
    sizes = torch.tensor([[240, 320], [240, 224]])
    params = sample_params(PRETRAIN, sizes, 2, generator())
    assert params.boxes[1, 2] <= 224


def test_clips_stored_channel_last_augment_exactly_like_channel_first_ones():
    """Loaders hand out clips stored channel-last (data.stack_frames); the values must not depend on it."""
    clips = torch.randint(0, 256, (2, 5, 3, 48, 64), dtype=torch.uint8, generator=generator())
    channel_last = clips.movedim(2, -1).contiguous().movedim(-1, 2)
    sizes = torch.tensor([[48, 64]] * 2)
    for recipe in (PRETRAIN, FINETUNE_TRAIN, TEST):
        assert torch.equal(augment.ClipAugment(recipe, 32, seed=0)(channel_last, sizes),
                           augment.ClipAugment(recipe, 32, seed=0)(clips, sizes))
    assert torch.equal(augment.ten_crop(channel_last, sizes, 32), augment.ten_crop(clips, sizes, 32))


def color_bars(frames=1, height=8, width=8):
    """uint8 frames whose red, green and blue channels hold 10, 20 and 30."""
    clip = torch.zeros(1, frames, 3, height, width, dtype=torch.uint8)
    clip[:, :, 0], clip[:, :, 1], clip[:, :, 2] = 10, 20, 30
    return clip


def test_grayscale_copies_one_random_channel_to_all_three_or_uses_luminance():
    count = 3000
    clip = color_bars(frames=count)
    # luminance: 0.299 * 10 + 0.587 * 20 + 0.114 * 30 = 18.15
    for gray, allowed in (("channel", {(10,) * 3, (20,) * 3, (30,) * 3}), ("luminance", {(18,) * 3})):
        recipe = augment.Recipe(crop="center", gray_p=1.0, per_frame_color=True, gray=gray, resize="bilinear")
        params = sample_params(recipe, torch.tensor([[8, 8]]), count, generator())
        pixels = (augment.denormalize(apply_params(clip, params, 8, recipe))[0, :, :, 0, 0] * 255).round().int()
        outcomes = [tuple(pixel) for pixel in pixels.tolist()]
        assert set(outcomes) == allowed, gray
        if gray == "channel":
            shares = torch.tensor([outcomes.count((value,) * 3) for value in (10, 20, 30)]) / count
            assert torch.allclose(shares, torch.full((3,), 1 / 3), atol=0.03), "each channel as often"


@pytest.mark.parametrize("size", [128, 196, 112, 64, 224])
def test_nearest_resize_picks_pils_nearest_pixels(size):
    image = torch.randint(0, 256, (224, 224, 3), dtype=torch.uint8, generator=generator())
    expected = np.asarray(Image.fromarray(image.numpy()).resize((size, size), Image.NEAREST))
    got = augment.nearest_resize(image.permute(2, 0, 1)[None], size)[0].permute(1, 2, 0).numpy()
    assert np.array_equal(got, expected)


def test_resize_is_nearest_after_a_224_crop_by_default_and_antialiased_bilinear_as_an_option():
    checkerboard = ((torch.arange(240)[:, None] + torch.arange(320)[None, :]) % 2).float().expand(1, 3, -1, -1)
    box = torch.tensor([[10.0, 5.0, 234.0, 229.0]])
    nearest = augment.crop_resize(checkerboard, box, 1, 112)
    bilinear = augment.crop_resize(checkerboard, box, 1, 112, resize="bilinear")
    assert set(nearest.unique().tolist()) <= {0.0, 1.0}
    assert torch.allclose(bilinear, torch.full_like(bilinear, 0.5), atol=1e-5), "two pixels averaged into one"
    assert augment.pretraining_recipe("frame").resize == "nearest"
    assert augment.pretraining_recipe("frame", resize="bilinear").resize == "bilinear"
    with pytest.raises(ValueError, match="resize"):
        augment.evaluation_recipe("bicubic")


def test_finetuning_validation_keeps_70_percent_of_clips_at_the_test_views_centre_crop():
    """The reference's RandomSizedCrop(p=0.3): a clip not random-sized gets the centre 224 crop, as the test does."""
    sizes = torch.tensor([[240, 320]] * 4000)
    params = sample_params(FINETUNE_VAL, sizes, 5, generator())
    centre = sample_params(TEST, sizes[:1], 5, generator()).boxes[0]
    assert centre.tolist() == [48.0, 8.0, 272.0, 232.0]
    assert (params.boxes == centre).all(dim=1).float().mean() == pytest.approx(0.7, abs=0.03)


def test_centre_crop_rounds_a_half_pixel_offset_to_even_as_the_reference():
    boxes = sample_params(TEST, torch.tensor([[240, 321], [240, 323]]), 1, generator()).boxes
    assert boxes[:, 0].tolist() == [48.0, 50.0]  # (321 - 224) / 2 = 48.5 and (323 - 224) / 2 = 49.5
