"""Nearest-neighbour retrieval: recall at k over hand-built features whose answer is known."""
import pytest
import torch

from Evaluate.retrieval import recall_at_k
from Evaluate.video_mean import VideoMean


def test_recall_counts_a_hit_when_any_of_the_k_nearest_shares_the_label():
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])  # mean zero: centring keeps them
    train_labels = torch.tensor([0, 1, 1, 2])
    # Neighbours by cosine: query 0 -> train 0, 1, ...; query 1 -> train 1; query 2 -> train 3, 2, 0.
    test = torch.tensor([[1.0, 0.2], [0.1, 1.0], [-0.2, -1.0]])
    test_labels = torch.tensor([1, 1, 0])
    recall = recall_at_k(train, train_labels, test, test_labels, ks=(1, 2, 3))
    assert recall == pytest.approx({"R@1": 1 / 3, "R@2": 2 / 3, "R@3": 1.0})


def test_centring_removes_an_offset_shared_by_every_video():
    torch.manual_seed(0)
    directions = torch.randn(2, 16)
    train = torch.cat([directions[0] + 0.1 * torch.randn(5, 16), directions[1] + 0.1 * torch.randn(5, 16)])
    test = torch.cat([directions[0] + 0.1 * torch.randn(3, 16), directions[1] + 0.1 * torch.randn(3, 16)])
    labels_train, labels_test = torch.tensor([0] * 5 + [1] * 5), torch.tensor([0] * 3 + [1] * 3)
    offset = 100 * torch.randn(16)
    recall = recall_at_k(train + offset, labels_train, test + offset, labels_test, ks=(1,))
    assert recall["R@1"] == 1.0


def test_window_values_average_per_video_in_any_order():
    means = VideoMean(3, 2, torch.device("cpu"))
    means.add(torch.tensor([2, 0]), torch.tensor([[4.0, 0.0], [1.0, 1.0]]))
    means.add(torch.tensor([0, 1, 2]), torch.tensor([[3.0, 1.0], [5.0, 5.0], [0.0, 2.0]]))
    assert torch.equal(means.result(), torch.tensor([[2.0, 1.0], [5.0, 5.0], [2.0, 1.0]]))
