"""A linear probe fitted to frozen per-video features: it converges in seconds, where --train_what last trains a
few hundred steps through the whole network and may stop short of its optimum."""
import torch
from torch.nn import functional as F

WEIGHT_DECAY = 1e-3  # on cross-entropy averaged over videos, with standardised features
MAX_ITERATIONS = 500


def penalised_loss(linear: torch.nn.Linear, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy plus WEIGHT_DECAY/2 * |W|^2: strictly convex in the weights, so it has one optimum."""
    return F.cross_entropy(linear(features), labels) + WEIGHT_DECAY / 2 * linear.weight.square().sum()


def fit_linear_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.nn.Linear:
    """Multinomial logistic regression, fitted full-batch with L-BFGS from zero weights: the result depends on
    the features alone."""
    linear = torch.nn.Linear(features.shape[1], num_classes)
    torch.nn.init.zeros_(linear.weight)
    torch.nn.init.zeros_(linear.bias)
    optimiser = torch.optim.LBFGS(linear.parameters(), max_iter=MAX_ITERATIONS, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = penalised_loss(linear, features, labels)
        loss.backward()
        return loss

    with torch.enable_grad():  # callers extract features under no_grad
        optimiser.step(closure)
    return linear


def feature_probe_top1(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                       test_labels: torch.Tensor, num_classes: int) -> float:
    """Test top-1 of a probe fitted to the training videos' features, both sets standardised with the training
    set's mean and std, as the classifier's BatchNorm1d does at test time."""
    mean, std = train_features.mean(dim=0), train_features.std(dim=0, correction=0).clamp_min(1e-6)
    linear = fit_linear_probe((train_features - mean) / std, train_labels, num_classes)
    with torch.no_grad():
        return (linear((test_features - mean) / std).argmax(dim=1) == test_labels).float().mean().item()
