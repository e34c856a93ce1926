"""The encoder shared by pretraining and the classifier: ResNet18 trunk -> tokens -> Transformer."""
import torch
from torch import nn

from CPCTrans.backbone import build_backbone
from CPCTrans.convgru import init_orthogonal

ATTENTION_KINDS = ("full", "causal")


class VideoEncoder(nn.Module):
    """Clips (B, N, 3, H, W) -> per-frame feature maps (B, N, 256, h, w) mixed across the whole clip.

    Every spatial position of every frame is one token. With attn="full" (the reference) every
    token sees every frame; with attn="causal" a token sees its own and earlier frames only.
    """

    def __init__(self, net: str = "resnet18", attn: str = "full", layers: int = 2, heads: int = 4,
                 ffn: int = 2048, dropout: float = 0.1):
        super().__init__()
        if attn not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {attn!r}")
        self.attn = attn
        self.backbone = build_backbone(net)
        width = self.backbone.out_channels
        layer = nn.TransformerEncoderLayer(width, heads, ffn, dropout, activation="relu",
                                           batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(width),
                                                 enable_nested_tensor=False)
        init_orthogonal(self.transformer)
        self.channels_last = False

    @property
    def width(self) -> int:
        return self.backbone.out_channels

    def frame_features(self, clips: torch.Tensor) -> torch.Tensor:
        """(B, N, 3, H, W) -> backbone maps (B, N, C, h, w), before the Transformer."""
        batch, steps = clips.shape[:2]
        frames = clips.flatten(0, 1)
        if self.channels_last:
            frames = frames.contiguous(memory_format=torch.channels_last)
        maps = self.backbone(frames)
        return maps.view(batch, steps, *maps.shape[1:])

    def forward(self, clips: torch.Tensor, relu_input: bool = False) -> torch.Tensor:
        maps = self.frame_features(clips)
        if relu_input:
            maps = torch.relu(maps)
        batch, steps, channels, height, width = maps.shape
        tokens = maps.permute(0, 1, 3, 4, 2).reshape(batch, steps * height * width, channels)
        mask = self._frame_causal_mask(steps, height * width, tokens.device) if self.attn == "causal" else None
        tokens = self.transformer(tokens, mask=mask)
        return tokens.view(batch, steps, height, width, channels).permute(0, 1, 4, 2, 3)

    @staticmethod
    def _frame_causal_mask(steps: int, tokens_per_frame: int, device: torch.device) -> torch.Tensor:
        """Boolean mask, True where attention is forbidden: keys from later frames than the query."""
        frame_of_token = torch.arange(steps, device=device).repeat_interleave(tokens_per_frame)
        return frame_of_token[None, :] > frame_of_token[:, None]
