"""The dense contrastive target, the negative kinds and the pretext metrics (docs/method.md)."""
import torch

from CPCTrans.cpc import (FuturePredictor, PretextMetrics, contrastive_loss, dense_scores, plateau_warning, reverse_future,
                          score_kinds, step_similarity_sum)


def test_predicting_the_targets_scores_top1_of_100_percent():
    torch.manual_seed(0)
    model = FuturePredictor(num_seq=5, pred_step=3).eval()
    with torch.no_grad():
        _, targets = model(torch.randn(3, 5, 3, 64, 64))
        perfect = dense_scores(targets, targets)
        shuffled = dense_scores(targets.roll(1, dims=0), targets)
    metrics = PretextMetrics()
    metrics.update(contrastive_loss(perfect), perfect, targets)
    summary = metrics.summary()
    assert perfect.shape == (3 * 3 * 4, 3 * 3 * 4)
    assert summary["top1"] == 1.0 and summary["top5"] == 1.0
    assert contrastive_loss(perfect) < contrastive_loss(shuffled)


def test_scores_under_bf16_autocast_still_tell_a_positive_from_its_temporal_negatives():
    # Targets that barely change over time, as on the 1/3 plateau: a video's steps share a large component
    # (score ~80) and differ by a small one (positive minus temporal negative ~0.05, below bf16's 0.5 there).
    torch.manual_seed(0)
    shared = torch.randn(2, 1, 128, 1, 1) * 0.8
    per_step = torch.randn(2, 3, 128, 1, 1) * 0.02
    targets = torch.cat([shared.expand(-1, 3, -1, -1, -1), per_step], dim=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = dense_scores(targets, targets)
    metrics = PretextMetrics()
    metrics.update(contrastive_loss(scores), scores, targets)
    assert scores.dtype == torch.float32
    assert metrics.summary()["top1"] == 1.0


def test_score_kinds_on_a_case_checked_by_hand():
    # 2 videos x 2 steps x 2 positions; rows and columns ordered (video, step, position).
    P, S, T, E = 0, 1, 2, 3
    expected = torch.tensor([
        [P, S, T, S, E, E, E, E],
        [S, P, S, T, E, E, E, E],
        [T, S, P, S, E, E, E, E],
        [S, T, S, P, E, E, E, E],
        [E, E, E, E, P, S, T, S],
        [E, E, E, E, S, P, S, T],
        [E, E, E, E, T, S, P, S],
        [E, E, E, E, S, T, S, P],
    ], dtype=torch.int8)
    assert torch.equal(score_kinds(2, 2, 2), expected)


def test_wrong_picks_are_attributed_to_their_kind():
    # 2 videos x 3 steps x 1 position: every row picks the same position one step later in its video.
    kinds = score_kinds(2, 3, 1)
    scores = torch.zeros(6, 6)
    for row in range(6):
        scores[row, row - 1 if row % 3 else row + 1] = 1.0
    metrics = PretextMetrics()
    metrics.update(contrastive_loss(scores), scores, torch.randn(2, 3, 8, 1, 1))
    summary = metrics.summary()
    assert kinds[0, 1] == 2
    assert summary["top1"] == 0.0
    assert summary["wrong_temporal"] == 1.0 and summary["wrong_easy"] == 0.0 and summary["wrong_spatial"] == 0.0


def test_metrics_accumulate_over_batches():
    metrics = PretextMetrics()
    eye = torch.eye(4) * 10
    wrong = eye.roll(1, dims=1)
    metrics.update(contrastive_loss(eye), eye, torch.randn(4, 1, 8, 1, 1))
    metrics.update(contrastive_loss(wrong), wrong, torch.randn(4, 1, 8, 1, 1))
    summary = metrics.summary()
    assert summary["top1"] == 0.5
    assert summary["wrong_easy"] == 1.0


def step_similarity(targets: torch.Tensor) -> float:
    total, pairs = step_similarity_sum(targets)
    return total.item() / pairs


def test_targets_that_do_not_change_over_time_have_step_similarity_one():
    torch.manual_seed(0)
    per_video = torch.randn(6, 1, 32, 2, 2)  # a vector per video and position, the same at every step
    assert abs(step_similarity(per_video.expand(-1, 3, -1, -1, -1)) - 1) < 1e-5
    assert abs(step_similarity(torch.randn(6, 3, 32, 2, 2))) < 0.1  # independent steps: near 0


# Last validations of real CPU pretrainings (docs/results.md), with what finetuning from them gave against random weights.
PLATEAU = {"loss": 1.3055, "top1": 0.3333, "top3": 0.9611, "top5": 0.9833, "wrong_spatial": 0.0,
           "wrong_temporal": 0.9375, "wrong_easy": 0.0625, "step_similarity": 0.9932, "top1_reversed": 0.3111}
CLIP_COLOR_100_STEPS = {"loss": 1.6347, "top1": 0.2642, "top3": 0.7798, "top5": 0.8687, "wrong_spatial": 0.0,
                         "wrong_temporal": 0.6979, "wrong_easy": 0.3021, "step_similarity": 0.9992,
                         "top1_reversed": 0.2531}


def test_only_a_validation_on_the_plateau_warns_that_finetuning_from_it_fares_worse_than_random_weights():
    warning = plateau_warning(PLATEAU, 3, "run/epoch100.pth.tar", "frame")  # finetuned: 17.8% against 41.5% random
    assert warning.startswith("warning: run/epoch100.pth.tar: its last validation sits on the pretext's 1/3 plateau")
    assert "(top1 0.3333, 94% of the wrong picks temporal, targets across steps at cos 0.99)" in warning
    assert "\n" not in warning
    # Targets as alike, but a top-1 off 1/3 and wrong picks of both kinds: finetuned to 62.0% against 41.5%.
    assert plateau_warning(CLIP_COLOR_100_STEPS, 3, "run/epoch2.pth.tar", "clip") is None
    # The plateau of two predicted steps is at 1/2.
    assert plateau_warning(PLATEAU, 2, "run/epoch100.pth.tar", "frame") is None
    assert plateau_warning({**PLATEAU, "top1": 0.5}, 2, "run/epoch100.pth.tar", "frame").count("1/2 plateau") == 1
    # Checkpoints saved without a validation say nothing.
    assert plateau_warning({}, 3, "run/epoch1.pth.tar", "frame") is None
    assert plateau_warning({"loss": 1.1, "top1": 0.3333}, 3, "run/epoch1.pth.tar", "frame") is None


def test_the_plateau_warning_points_a_per_frame_color_run_to_per_clip_color():
    per_frame, per_clip = (plateau_warning(PLATEAU, 3, "run/epoch100.pth.tar", kind) for kind in ("frame", "clip"))
    assert per_frame.endswith("pretrain until the top-1 leaves 1/3, or pretrain with --color_aug clip")
    # A run that already pretrained per clip has only the first advice.
    assert per_clip.endswith("pretrain until the top-1 leaves 1/3")
    assert per_frame.startswith(per_clip)


def test_a_clip_of_one_repeated_frame_gives_the_reference_encoder_identical_targets():
    """Without position encoding the Transformer cannot tell equal frames apart: the collapse the metric
    reports. With moving content, or a position encoding, the targets differ from step to step."""
    torch.manual_seed(0)
    frames = torch.randn(4, 5, 3, 64, 64)
    still = frames[:, :1].expand(-1, 5, -1, -1, -1)
    with torch.no_grad():
        _, still_targets = FuturePredictor().eval()(still)
        _, moving_targets = FuturePredictor().eval()(frames)
        _, encoded_targets = FuturePredictor(pos_enc="sincos").eval()(still)
    assert abs(step_similarity(still_targets) - 1) < 1e-4
    assert step_similarity(moving_targets) < 0.9
    assert step_similarity(encoded_targets) < 0.99


def test_step_similarity_averages_over_the_pairs_of_all_batches():
    torch.manual_seed(0)
    same = torch.randn(4, 1, 16, 1, 1).expand(-1, 3, -1, -1, -1)
    independent = torch.randn(4, 3, 16, 1, 1)
    metrics = PretextMetrics()
    for targets in (same, independent):
        scores = torch.randn(12, 12)
        metrics.update(contrastive_loss(scores), scores, targets)
    expected = (step_similarity(same) + step_similarity(independent)) / 2  # equal numbers of pairs
    assert abs(metrics.summary()["step_similarity"] - expected) < 1e-5
    one_step = PretextMetrics()
    one_step.update(contrastive_loss(torch.eye(4)), torch.eye(4), torch.randn(4, 1, 16, 1, 1))
    assert "step_similarity" not in one_step.summary()  # a single predicted step has no pairs


def test_the_reference_encoder_follows_reversed_future_frames_while_its_predictions_stay():
    """Without position encoding the Transformer treats the tokens as a set: reversing the predicted frames
    reverses the targets and leaves the context, so the check measures what the frames show. A position
    encoding ties each target to its slot, so its targets no longer just swap places."""
    torch.manual_seed(0)
    clips = torch.randn(2, 5, 3, 64, 64)
    reversed_clips = reverse_future(clips, 3)
    assert torch.equal(reversed_clips[:, :2], clips[:, :2]) and torch.equal(reversed_clips[:, 2:], clips[:, [4, 3, 2]])
    with torch.no_grad():
        reference = FuturePredictor().eval()
        predictions, targets = reference(clips)
        reversed_predictions, reversed_targets = reference(reversed_clips)
        encoded = FuturePredictor(pos_enc="sincos").eval()
        _, encoded_targets = encoded(clips)
        _, encoded_reversed_targets = encoded(reversed_clips)
    assert torch.allclose(reversed_predictions, predictions, atol=1e-4)
    assert torch.allclose(reversed_targets, targets.flip(1), atol=1e-4)
    assert not torch.allclose(encoded_reversed_targets, encoded_targets.flip(1), atol=1e-2)


def test_a_content_predictor_keeps_only_the_middle_step_when_the_future_is_reversed():
    """Perfect predictions of targets that differ from step to step: top-1 1 as they come, 1/3 reversed (only the
    middle of three steps stays in place). Targets told apart by their slot alone would keep top-1 1."""
    torch.manual_seed(0)
    targets = torch.randn(4, 3, 32, 2, 2)
    metrics = PretextMetrics()
    scores = dense_scores(targets, targets)
    metrics.update(contrastive_loss(scores), scores, targets)
    metrics.update_reversed(dense_scores(targets, targets.flip(1)))
    summary = metrics.summary()
    assert summary["top1"] == 1.0
    assert abs(summary["top1_reversed"] - 1 / 3) < 1e-6
    without_reversal = PretextMetrics()
    without_reversal.update(contrastive_loss(scores), scores, targets)
    assert "top1_reversed" not in without_reversal.summary()  # training steps, and a single predicted step
