"""A ConvGRU with 1x1 kernels: the aggregator that summarises a sequence of feature maps."""
import torch
from torch import nn

from CPCTrans.weight_init import init_orthogonal

GRU_DROPOUT = 0.1  # the reference's dropout on the hidden state after every step


class ConvGRU(nn.Module):
    """One-layer ConvGRU. Input (B, T, C, h, w) -> hidden states (B, T, C_h, h, w).

    Reset and update gates are one convolution (their weights stacked, each block initialised on its own as the
    reference's two separate convolutions are). Dropout acts on the hidden state after every step, the context
    steps and the recursive prediction steps alike, as in the reference.
    """

    def __init__(self, input_size: int, hidden_size: int, kernel_size: int = 1, dropout: float = GRU_DROPOUT):
        super().__init__()
        self.hidden_size = hidden_size
        padding = kernel_size // 2
        self.gates = nn.Conv2d(input_size + hidden_size, 2 * hidden_size, kernel_size, padding=padding)
        self.candidate = nn.Conv2d(input_size + hidden_size, hidden_size, kernel_size, padding=padding)
        self.dropout = nn.Dropout(dropout)
        init_orthogonal(self, stacked={"gates.weight": 2})

    def step(self, x: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """The hidden state after input `x` (B, C, h, w), dropout applied."""
        reset, update = torch.sigmoid(self.gates(torch.cat([x, hidden], dim=1))).chunk(2, dim=1)
        candidate = torch.tanh(self.candidate(torch.cat([x, reset * hidden], dim=1)))
        return self.dropout((1 - update) * hidden + update * candidate)

    def forward(self, x: torch.Tensor, hidden: torch.Tensor | None = None) -> torch.Tensor:
        batch, steps, _, height, width = x.shape
        if hidden is None:
            hidden = x.new_zeros(batch, self.hidden_size, height, width)
        states = []
        for t in range(steps):
            hidden = self.step(x[:, t], hidden)
            states.append(hidden)
        return torch.stack(states, dim=1)
