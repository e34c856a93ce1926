"""A ConvGRU with 1x1 kernels: the aggregator that summarises a sequence of feature maps."""
import torch
from torch import nn


class ConvGRU(nn.Module):
    """One-layer ConvGRU. Input (B, T, C, h, w) -> hidden states (B, T, C_h, h, w)."""

    def __init__(self, input_size: int, hidden_size: int, kernel_size: int = 1):
        super().__init__()
        self.hidden_size = hidden_size
        padding = kernel_size // 2
        self.gates = nn.Conv2d(input_size + hidden_size, 2 * hidden_size, kernel_size, padding=padding)
        self.candidate = nn.Conv2d(input_size + hidden_size, hidden_size, kernel_size, padding=padding)
        init_orthogonal(self)

    def step(self, x: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        reset, update = torch.sigmoid(self.gates(torch.cat([x, hidden], dim=1))).chunk(2, dim=1)
        candidate = torch.tanh(self.candidate(torch.cat([x, reset * hidden], dim=1)))
        return (1 - update) * hidden + update * candidate

    def forward(self, x: torch.Tensor, hidden: torch.Tensor | None = None) -> torch.Tensor:
        batch, steps, _, height, width = x.shape
        if hidden is None:
            hidden = x.new_zeros(batch, self.hidden_size, height, width)
        states = []
        for t in range(steps):
            hidden = self.step(x[:, t], hidden)
            states.append(hidden)
        return torch.stack(states, dim=1)


def init_orthogonal(module: nn.Module) -> None:
    """The reference's init for the Transformer, ConvGRU and predictor: orthogonal weights, zero biases."""
    for name, param in module.named_parameters():
        if name.endswith("bias"):
            nn.init.zeros_(param)
        elif param.dim() >= 2:
            nn.init.orthogonal_(param)
