"""The encoder shared by pretraining and the classifier: ResNet18 trunk -> tokens -> Transformer."""
import math

import torch
from torch import nn

from CPCTrans.backbone import build_backbone
from CPCTrans.weight_init import init_orthogonal

ATTENTION_KINDS = ("full", "causal", "split")
POSITION_KINDS = ("none", "learned", "sincos")
MAX_FRAMES = 64  # longest clip a learned temporal table covers
MAX_SIDE = 64  # largest feature map side a learned spatial table covers (img_dim 2048)


def sincos_table(positions: int, channels: int, device: torch.device | None = None) -> torch.Tensor:
    """(positions, channels): sin on the first half, cos on the second, wavelengths 1 .. 10000 (Vaswani et al.)."""
    position = torch.arange(positions, dtype=torch.float32, device=device)[:, None]
    steps = torch.arange(channels // 2, dtype=torch.float32, device=device)
    frequency = torch.exp(-steps * (math.log(10000) / (channels // 2)))
    angles = position * frequency
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class PositionEncoding(nn.Module):
    """Spatio-temporal position of each token, added before the Transformer.

    "learned": a table per axis (frame, row, column) summed; "sincos": fixed sinusoids, the channels
    split between the three axes. Both are factorised, so any clip length and feature-map size up to
    the tables' sizes works, and finetuning at another --num_seq or --img_dim reuses what pretraining learned.
    """

    def __init__(self, kind: str, width: int):
        super().__init__()
        self.kind = kind
        if kind == "learned":
            self.frame = nn.Parameter(torch.zeros(MAX_FRAMES, width))
            self.row = nn.Parameter(torch.zeros(MAX_SIDE, width))
            self.column = nn.Parameter(torch.zeros(MAX_SIDE, width))
            for table in (self.frame, self.row, self.column):
                nn.init.trunc_normal_(table, std=0.02)
        else:
            # Even channel counts per axis: time takes what rows and columns leave.
            side_channels = (width // 3) // 2 * 2
            self.split = (width - 2 * side_channels, side_channels, side_channels)

    def forward(self, steps: int, height: int, width: int, device: torch.device) -> torch.Tensor:
        """(steps, height, width, channels), to add to the tokens of a (steps, height, width) clip."""
        if steps > MAX_FRAMES or max(height, width) > MAX_SIDE:
            raise ValueError(f"--pos_enc {self.kind} covers up to {MAX_FRAMES} frames and {MAX_SIDE}x{MAX_SIDE} "
                             f"feature maps, got {steps} frames of {height}x{width}")
        if self.kind == "learned":
            return (self.frame[:steps, None, None] + self.row[None, :height, None]
                    + self.column[None, None, :width])
        frame_c, row_c, column_c = self.split
        shape = (steps, height, width, -1)
        return torch.cat([sincos_table(steps, frame_c, device)[:, None, None].expand(shape),
                          sincos_table(height, row_c, device)[None, :, None].expand(shape),
                          sincos_table(width, column_c, device)[None, None, :].expand(shape)], dim=-1)


class VideoEncoder(nn.Module):
    """Clips (B, N, 3, H, W) -> per-frame feature maps (B, N, 256, h, w) mixed across the whole clip.

    Every spatial position of every frame is one token. With attn="full" (the reference) every
    token sees every frame; with attn="causal" a token sees its own and earlier frames only.
    attn="split" is causal over the context frames, while each of the last `predicted` frames (the
    pretext's targets) sees only itself: no target carries a copy of the context it is predicted
    from. With nothing to predict (the classifier) it is causal.
    With pos_enc="none" (the reference) the Transformer cannot tell tokens' positions apart.
    """

    def __init__(self, net: str = "resnet18", attn: str = "full", pos_enc: str = "none", layers: int = 2,
                 heads: int = 4, ffn: int = 2048, dropout: float = 0.1):
        super().__init__()
        if attn not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {attn!r}")
        if pos_enc not in POSITION_KINDS:
            raise ValueError(f"position encoding must be one of {POSITION_KINDS}, got {pos_enc!r}")
        self.attn = attn
        self.backbone = build_backbone(net)
        width = self.backbone.out_channels
        self.position = PositionEncoding(pos_enc, width) if pos_enc != "none" else None
        layer = nn.TransformerEncoderLayer(width, heads, ffn, dropout, activation="relu",
                                           batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(width),
                                                 enable_nested_tensor=False)
        init_orthogonal(self.transformer, stacked={"in_proj_weight": 3})  # q, k, v

    @property
    def width(self) -> int:
        return self.backbone.out_channels

    def frame_features(self, clips: torch.Tensor) -> torch.Tensor:
        """(B, N, 3, H, W) -> backbone maps (B, N, C, h, w), before the Transformer."""
        batch, steps = clips.shape[:2]
        frames = clips.flatten(0, 1)
        if self.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last):
            frames = frames.contiguous(memory_format=torch.channels_last)  # as the trunk's weights are stored
        maps = self.backbone(frames)
        return maps.view(batch, steps, *maps.shape[1:])

    def forward(self, clips: torch.Tensor, relu_input: bool = False, predicted: int = 0) -> torch.Tensor:
        maps = self.frame_features(clips)
        if relu_input:
            maps = torch.relu(maps)
        batch, steps, channels, height, width = maps.shape
        tokens = maps.permute(0, 1, 3, 4, 2)
        if self.position is not None:
            tokens = tokens + self.position(steps, height, width, tokens.device).to(tokens.dtype)
        tokens = tokens.reshape(batch, steps * height * width, channels)
        mask = self._frame_mask(steps, height * width, predicted, tokens.device)
        # is_causal=False: our masks are frame-level, and left as None torch compares every mask with a
        # token-causal one and reads the answer back to the host, once per forward pass.
        tokens = self.transformer(tokens, mask=mask, is_causal=False)
        return tokens.view(batch, steps, height, width, channels).permute(0, 1, 4, 2, 3)

    def _frame_mask(self, steps: int, tokens_per_frame: int, predicted: int,
                    device: torch.device) -> torch.Tensor | None:
        """Boolean (tokens, tokens) mask, True where a query token may not attend to a key token; None for full."""
        if self.attn == "full":
            return None
        frame = torch.arange(steps, device=device).repeat_interleave(tokens_per_frame)
        query, key = frame[:, None], frame[None, :]
        forbidden = key > query
        if self.attn == "split":
            first_target = steps - predicted
            forbidden |= (query >= first_target) & (key != query)
        return forbidden
