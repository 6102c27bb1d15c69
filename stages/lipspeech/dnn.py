"""The feed-forward nets of seed 003: the DNN baseline (b), and the GGDRM fine-tuned (d).

A sigmoid MLP from one side to the other with the GGDRM's widths (lip features 30 -> 100 -> 100 ->
mel-cepstra 32, or the reverse), linear output. Random initialisation (PyTorch's default, seeded)
and backprop is the paper's baseline; `stages.lipspeech.ggdrm.unroll` fills the same net with the
GGDRM's weights for fine-tuning.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

DIRECTIONS = ("x2y", "y2x")  # lip features -> mel-cepstra, and back


@dataclass(frozen=True)
class Config:
    x_dims: int
    y_dims: int
    hidden: tuple[int, ...] = (100, 100)

    def widths(self, direction: str) -> list[int]:
        forward = [self.x_dims, *self.hidden, self.y_dims]
        return forward if direction == "x2y" else forward[::-1]


def both_directions(config: Config) -> nn.ModuleDict:
    """The two nets as one module (one state dict): "x2y" and "y2x"."""
    return nn.ModuleDict({d: FeedForward(config.widths(d)) for d in DIRECTIONS})


class FeedForward(nn.Module):
    def __init__(self, widths: list[int]) -> None:
        super().__init__()
        self.linears = nn.ModuleList(
            nn.Linear(widths[k], widths[k + 1]) for k in range(len(widths) - 1)
        )

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        for linear in self.linears[:-1]:
            v = torch.sigmoid(linear(v))
        return self.linears[-1](v)
