"""The dense contrastive target, the negative kinds and the pretext metrics (DESIGN.md §2.7)."""
import torch

from CPCTrans.cpc import CPCTrans, PretextMetrics, contrastive_loss, dense_scores, score_kinds


def test_predicting_the_targets_scores_top1_of_100_percent():
    torch.manual_seed(0)
    model = CPCTrans(num_seq=5, pred_step=3).eval()
    with torch.no_grad():
        _, targets = model(torch.randn(3, 5, 3, 64, 64))
        perfect = dense_scores(targets, targets)
        shuffled = dense_scores(targets.roll(1, dims=0), targets)
    metrics = PretextMetrics()
    metrics.update(contrastive_loss(perfect), perfect, (3, 3, 4))
    summary = metrics.summary()
    assert perfect.shape == (3 * 3 * 4, 3 * 3 * 4)
    assert summary["top1"] == 1.0 and summary["top5"] == 1.0
    assert contrastive_loss(perfect) < contrastive_loss(shuffled)


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
    metrics.update(contrastive_loss(scores), scores, (2, 3, 1))
    summary = metrics.summary()
    assert kinds[0, 1] == 2
    assert summary["top1"] == 0.0
    assert summary["wrong_temporal"] == 1.0 and summary["wrong_easy"] == 0.0 and summary["wrong_spatial"] == 0.0


def test_metrics_accumulate_over_batches():
    metrics = PretextMetrics()
    eye = torch.eye(4) * 10
    wrong = eye.roll(1, dims=1)
    metrics.update(contrastive_loss(eye), eye, (4, 1, 1))
    metrics.update(contrastive_loss(wrong), wrong, (4, 1, 1))
    summary = metrics.summary()
    assert summary["top1"] == 0.5
    assert summary["wrong_easy"] == 1.0
