"""The residual DAVEnet audio encoder used by MCN (after AVLnet's ResDavenet), in plain torch.

Input: log-mel spectrograms (n, 40, T). A 40x1 convolution collapses frequency into 128 channels;
four stages of two residual blocks with 1x9 kernels (widths 128, 256, 512, 1024), the first block
of each stage striding 2 in time with a 1x1 conv + BN shortcut, give (n, 1024, ceil(T/16)).
`embed` averages over the valid frames only (ceil(n_frames/16) of them), so zero padding of a
short clip does not dilute its embedding.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

WIDTHS = (128, 256, 512, 1024)
EMBED_DIM = WIDTHS[-1]
STRIDE = 2 ** len(WIDTHS)  # time frames per output step


class BasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, (1, 9), (1, stride), (0, 4), bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, (1, 9), 1, (0, 4), bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, (1, stride), bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResDavenet(nn.Module):
    """`widths` are the four stages' channels: the published model's by default; the MCN
    training stage narrows them for CPU runs."""

    def __init__(self, n_mels: int = 40, blocks: int = 2, widths: tuple[int, ...] = WIDTHS) -> None:
        super().__init__()
        if len(widths) != len(WIDTHS):
            raise ValueError(f"ResDavenet has {len(WIDTHS)} stages: give {len(WIDTHS)} widths")
        self.conv1 = nn.Conv2d(1, widths[0], (n_mels, 1), bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        layers, inplanes = [], widths[0]
        for width in widths:
            stage = [BasicBlock(inplanes, width, 2)]
            stage += [BasicBlock(width, width, 1) for _ in range(1, blocks)]
            layers.append(nn.Sequential(*stage))
            inplanes = width
        self.layer1, self.layer2, self.layer3, self.layer4 = layers

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        """(n, n_mels, T) -> (n, 1024, ceil(T/16))."""
        x = self.relu(self.bn1(self.conv1(spec.unsqueeze(1))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.squeeze(2)

    def embed(self, spec: torch.Tensor, n_frames: torch.Tensor) -> torch.Tensor:
        """(n, 1024): the mean over each clip's ceil(n_frames/16) valid output steps."""
        out = self(spec)
        valid = torch.clamp(torch.div(n_frames + STRIDE - 1, STRIDE, rounding_mode="floor"), min=1)
        mask = torch.arange(out.shape[2], device=out.device)[None, :] < valid[:, None]
        return (out * mask[:, None, :]).sum(2) / valid[:, None].to(out.dtype)


def load_davenet(weights: Path) -> ResDavenet:
    """ResDavenet in eval mode from a state_dict file (strict: every key must match)."""
    model = ResDavenet()
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()
