"""The reference's 2D ResNet18 trunk: torchvision's BasicBlock layout with a 256-channel last stage."""
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

STAGE_CHANNELS = (64, 128, 256, 256)


class BasicBlockNoReLU(BasicBlock):
    """A BasicBlock whose output skips the final ReLU (the reference's last block)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out)) + identity


def _stage(in_channels: int, out_channels: int, stride: int, last_block: type) -> nn.Sequential:
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
            nn.BatchNorm2d(out_channels),
        )
    return nn.Sequential(
        BasicBlock(in_channels, out_channels, stride, downsample),
        last_block(out_channels, out_channels),
    )


class ResNet18Trunk(nn.Module):
    """Frames (B, 3, H, W) -> feature maps (B, 256, H/32, W/32); no pooling, no fc."""

    out_channels = STAGE_CHANNELS[-1]

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        c1, c2, c3, c4 = STAGE_CHANNELS
        self.layer1 = _stage(64, c1, 1, BasicBlock)
        self.layer2 = _stage(c1, c2, 2, BasicBlock)
        self.layer3 = _stage(c2, c3, 2, BasicBlock)
        self.layer4 = _stage(c3, c4, 2, BasicBlockNoReLU)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def build_backbone(net: str) -> ResNet18Trunk:
    if net != "resnet18":
        raise ValueError(f"--net {net} is not supported: this repository implements resnet18 only")
    return ResNet18Trunk()
