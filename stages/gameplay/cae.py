"""The convolutional autoencoder of seed 000: a 128-d feature per 128x128 RGB frame.

Five conv + max-pool pairs halve the frame to 4x4, a linear layer gives the 128-unit bottleneck
(tanh, the range of the MTRNN's IO units that learn its sequences); the decoder mirrors it with
five upsample + conv layers back to 128x128x3 in [0, 1] (sigmoid).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Config:
    """Sizes; `channels` are the encoder's five conv layers (the decoder mirrors them)."""

    size: int = 128
    channels: tuple[int, ...] = (32, 64, 128, 256, 256)
    bottleneck: int = 128

    def __post_init__(self) -> None:
        if self.size % 2 ** len(self.channels):
            raise ValueError(f"size {self.size} does not halve {len(self.channels)} times")

    @property
    def grid(self) -> int:
        """Side of the smallest feature map (4 for 128 px and five pools)."""
        return self.size // 2 ** len(self.channels)


class CAE(nn.Module):
    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        previous = 3
        for width in config.channels:
            layers += [nn.Conv2d(previous, width, 3, padding=1), nn.ReLU(True), nn.MaxPool2d(2)]
            previous = width
        flat = previous * config.grid**2
        self.encoder = nn.Sequential(*layers, nn.Flatten(), nn.Linear(flat, config.bottleneck))
        self.expand = nn.Linear(config.bottleneck, flat)
        layers = []
        for width in (*reversed(config.channels[:-1]), 3):
            layers += [nn.Upsample(scale_factor=2), nn.Conv2d(previous, width, 3, padding=1)]
            layers.append(nn.ReLU(True) if width != 3 else nn.Sigmoid())
            previous = width
        self.decoder = nn.Sequential(*layers)

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(n, 3, size, size) in [0, 1] -> features (n, bottleneck) in (-1, 1)."""
        return torch.tanh(self.encoder(frames))

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        """(n, bottleneck) -> frames (n, 3, size, size) in [0, 1]."""
        c = self.config
        grid = self.expand(features).view(-1, c.channels[-1], c.grid, c.grid)
        return self.decoder(grid)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(frames))
