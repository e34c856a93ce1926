"""The action classifier ("LC", docs/method.md) on the encoder shared with pretraining."""
import torch
from torch import nn

from CPCTrans.convgru import GRU_DROPOUT, ConvGRU
from CPCTrans.encoder import VideoEncoder
from CPCTrans.weight_init import init_orthogonal

TRAIN_WHAT = ("ft", "all", "last")


class VideoClassifier(nn.Module):
    """Backbone -> ReLU -> Transformer -> ReLU -> ConvGRU -> last state -> spatial mean -> BN -> dropout -> linear.

    Parameter names match CPCTrans for the shared parts (encoder.*, agg.*), so pretrained weights load by name.
    """

    kind = "classifier"

    def __init__(self, num_classes: int, net: str = "resnet18", attn: str = "full", pos_enc: str = "none",
                 dropout: float = 0.5, gru_dropout: float = GRU_DROPOUT):
        super().__init__()
        self.config = {"net": net, "num_classes": num_classes, "attn": attn, "pos_enc": pos_enc, "dropout": dropout,
                       "gru_dropout": gru_dropout}
        self.encoder = VideoEncoder(net, attn, pos_enc)
        width = self.encoder.width
        self.agg = ConvGRU(width, width, dropout=gru_dropout)
        self.final_bn = nn.BatchNorm1d(width)
        self.final_fc = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, num_classes))
        init_orthogonal(self.final_fc)

    def features(self, clips: torch.Tensor) -> torch.Tensor:
        """Clips (B, N, 3, H, W) -> (B, 256): the spatially pooled last ConvGRU state."""
        context = torch.relu(self.encoder(clips, relu_input=True))
        return self.agg(context)[:, -1].mean(dim=(-2, -1))

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.final_fc(self.final_bn(self.features(clips).float()))

    def head(self) -> list[nn.Module]:
        return [self.final_bn, self.final_fc]

    def param_groups(self, train_what: str, lr: float) -> list[dict]:
        """ft: encoder at lr/10, the rest at lr; all: everything at lr; last: only the final BN + linear."""
        head_params = [p for module in self.head() for p in module.parameters()]
        if train_what == "last":
            self.requires_grad_(False)
            for module in self.head():
                module.requires_grad_(True)
            return [{"params": head_params, "lr": lr}]
        if train_what == "ft":
            return [{"params": list(self.encoder.parameters()), "lr": lr / 10},
                    {"params": list(self.agg.parameters()) + head_params, "lr": lr}]
        return [{"params": list(self.parameters()), "lr": lr}]

    def train_mode(self, train_what: str) -> None:
        """Training mode; a linear probe keeps the frozen part in eval mode (fixed BN statistics, no dropout)."""
        self.train()
        if train_what == "last":
            self.encoder.eval()
            self.agg.eval()
