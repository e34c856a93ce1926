"""The reference's initialisation of the Transformer, the ConvGRU, the predictor and the classifier's head."""
import torch
from torch import nn


def init_orthogonal(module: nn.Module, stacked: dict[str, int] | None = None) -> None:
    """The reference's init for the Transformer, ConvGRU and predictor: orthogonal weights, zero biases.

    `stacked` maps the end of a parameter's name to the number of weight matrices stacked in it (attention's q, k
    and v; the GRU's reset and update gates): each is made orthogonal on its own, as the reference's separate
    layers are. One orthogonal matrix over the stack would give each part rows of norm sqrt(parts) smaller.
    """
    stacked = stacked or {}
    for name, param in module.named_parameters():
        if name.endswith("bias"):
            nn.init.zeros_(param)
        elif param.dim() >= 2:
            parts = next((count for suffix, count in stacked.items() if name.endswith(suffix)), 1)
            with torch.no_grad():
                for block in param.chunk(parts, dim=0):
                    nn.init.orthogonal_(block)
