"""The linear probe fitted to frozen features: it must reach the optimum of its convex problem, learn labels that
its features determine linearly whatever their scale, and nothing from features unrelated to the labels."""
import pytest
import torch
from torch.nn import functional as F

from Evaluate import feature_probe
from Evaluate.feature_probe import feature_probe_top1, fit_linear_probe


def linearly_labelled(videos: int, width: int = 32, classes: int = 5, seed: int = 0):
    """Features and the class of a fixed linear map of them: a linear probe can learn the labels exactly."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(videos, width, generator=generator)
    return features, (features @ torch.randn(width, classes, generator=generator)).argmax(dim=1)


def test_labels_a_linear_map_gives_are_learned_from_features_of_any_scale_and_offset():
    features, labels = linearly_labelled(1200)
    train, test = slice(0, 800), slice(800, None)
    top1 = feature_probe_top1(features[train], labels[train], features[test], labels[test], 5)
    assert top1 >= 0.9
    # Standardisation makes the probe blind to a per-dimension scale and offset (a BatchNorm1d in front of it).
    scale, offset = torch.logspace(-3, 3, features.shape[1]), 50 * torch.ones(features.shape[1])
    moved = features * scale + offset
    assert feature_probe_top1(moved[train], labels[train], moved[test], labels[test], 5) == pytest.approx(top1,
                                                                                                         abs=0.01)


def test_the_fit_stops_at_the_optimum_where_the_penalised_loss_is_flat():
    features, labels = linearly_labelled(800, width=256)
    labels[::4] = torch.randint(0, 5, labels[::4].shape, generator=torch.Generator().manual_seed(2))  # noisy
    linear = fit_linear_probe(features, labels, 5)
    loss = feature_probe.penalised_loss(linear, features, labels)
    gradients = torch.autograd.grad(loss, list(linear.parameters()))
    assert max(gradient.abs().max().item() for gradient in gradients) < 1e-4
    assert loss.item() < F.cross_entropy(torch.zeros(800, 5), labels).item() / 2  # it learned, far from ln 5


def test_features_unrelated_to_the_labels_give_chance():
    generator = torch.Generator().manual_seed(3)
    features, labels = torch.randn(1200, 32, generator=generator), torch.randint(0, 5, (1200,), generator=generator)
    top1 = feature_probe_top1(features[:800], labels[:800], features[800:], labels[800:], 5)
    assert abs(top1 - 0.2) <= 0.06  # 400 test videos: chance's standard deviation is 0.02
