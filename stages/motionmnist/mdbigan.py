"""MDBiGAN (seed 002): a motion code without the content, learned BiGAN-style from videos.

A video is generated from a content code z_C (one per video, N(0, I), tiled over frames) and a
motion code z_M(t) per frame from an autoregressive GRU; a frame-wise encoder E maps real frames
back to z_M(t). Two joint discriminators judge pairs: D_I on (frame, z_M(t)), D_V (3-D convs) on
(video, z_M(1..T)). Real pairs are (x, E(x)), fake pairs (G(z_C, z_M), z_M); G and E are trained
with flipped labels, so at the optimum E inverts G's motion code, which G made independent of z_C.

Shapes: videos are (batch, T, 1, H, W) in [-1, 1]; motion codes (batch, T, dim_z_motion).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from stages.common import training
from stages.common.errors import StageError


@dataclass(frozen=True)
class Config:
    """Sizes. The defaults are the authors'; `width` scales every conv layer's channels."""

    frames: int = 20
    size: int = 64  # frame height and width; a power of two >= 16
    dim_z_content: int = 64
    dim_z_motion: int = 16
    width: int = 32  # channels of G's last hidden layer, E's and D's first; doubled per scale
    d_hidden: int = 256  # width of the discriminators' z-paths and joint MLPs
    spectral_norm: bool = False  # on every discriminator layer (a deviation; see train.py)
    motion_noise: bool = False  # fresh N(0, I) added to every GRU input (MoCoGAN's; a deviation)
    d_noise: float = 0.2  # std of Gaussian noise on the discriminators' inputs and hidden maps
    d_dropout: float = 0.1  # dropout in the discriminators' joint MLPs

    def __post_init__(self) -> None:
        if self.size < 16 or self.size & (self.size - 1):
            raise ValueError(f"size must be a power of two >= 16, got {self.size}")
        if self.frames < 4:
            raise ValueError(
                f"frames must be at least 4 (D_V's temporal kernel), got {self.frames}"
            )

    @property
    def scales(self) -> int:
        """Stride-2 layers between 4x4 and the frame size (4 for 64x64)."""
        return self.size.bit_length() - 3


class MotionGenerator(nn.Module):
    """z_M(1..T): a GRU cell from h_0 = 0, first input e_1 ~ N(0, I), then e_{t+1} = W h_t;
    each h_t through a shared BatchNorm1d (the authors' recipe).

    With `motion_noise`, e_{t+1} = W h_t + eps_t, eps_t ~ N(0, I) (MoCoGAN's fresh noise per
    step): MotionMNIST draws its jitter and rotation afresh every frame, which a trajectory fixed
    by e_1 cannot express, and a joint discriminator then tells E(x) from z_M by the codes alone."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        d = config.dim_z_motion
        self.config = config
        self.cell = nn.GRUCell(d, d)
        self.next_input = nn.Linear(d, d)
        self.norm = nn.BatchNorm1d(d)

    def forward(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        d, device = self.config.dim_z_motion, self.next_input.weight.device
        e = torch.randn(batch, d, device=device, generator=generator)
        h = torch.zeros(batch, d, device=device)
        states = []
        for _ in range(self.config.frames):
            h = self.cell(e, h)
            states.append(h)
            e = self.next_input(h)
            if self.config.motion_noise:
                e = e + torch.randn(batch, d, device=device, generator=generator)
        h_all = torch.stack(states, 1)  # (batch, T, d)
        return self.norm(h_all.flatten(0, 1)).view(batch, self.config.frames, d)


class FrameGenerator(nn.Module):
    """DCGAN generator: [z_C, z_M(t)] as a 1x1 map -> 4x4 -> ... -> size x size, tanh."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        top = config.width * 2 ** (config.scales - 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(
                config.dim_z_content + config.dim_z_motion, top, 4, 1, 0, bias=False
            ),
            nn.BatchNorm2d(top),
            nn.ReLU(True),
        ]
        channels = top
        for _ in range(config.scales - 1):
            layers += [
                nn.ConvTranspose2d(channels, channels // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(channels // 2),
                nn.ReLU(True),
            ]
            channels //= 2
        layers += [nn.ConvTranspose2d(channels, 1, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z_content: torch.Tensor, z_motion: torch.Tensor) -> torch.Tensor:
        batch, frames, _ = z_motion.shape
        tiled = z_content[:, None, :].expand(-1, frames, -1)
        z = torch.cat([tiled, z_motion], 2).flatten(0, 1)[:, :, None, None]
        out = self.net(z)
        return out.view(batch, frames, *out.shape[1:])


class Generator(nn.Module):
    """G(z_C, z_M) with its motion generator: `sample` draws both codes and renders the video."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self.motion = MotionGenerator(config)
        self.frames = FrameGenerator(config)

    def forward(self, z_content: torch.Tensor, z_motion: torch.Tensor) -> torch.Tensor:
        return self.frames(z_content, z_motion)

    def sample(
        self, batch: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(video, z_M) for z_C ~ N(0, I) and z_M from the motion generator."""
        device = self.motion.next_input.weight.device
        z_motion = self.motion(batch, generator)
        z_content = torch.randn(
            batch, self.config.dim_z_content, device=device, generator=generator
        )
        return self(z_content, z_motion), z_motion


class Noise(nn.Module):
    """Gaussian instance noise while training (MoCoGAN's and the authors' discriminators)."""

    def __init__(self, sigma: float) -> None:
        super().__init__()
        self.sigma = sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.sigma > 0:
            return x + self.sigma * torch.randn_like(x)
        return x


def _maybe_sn(module: nn.Module, sn: bool) -> nn.Module:
    return nn.utils.parametrizations.spectral_norm(module) if sn else module


def _frame_convs(config: Config, discriminator: bool) -> tuple[nn.Sequential, int]:
    """size x size x 1 -> 4x4 x C, stride-2 convs with leaky ReLU (DCGAN discriminator body).

    As a discriminator's x-path: instance noise before every conv, spectral norm if configured,
    no batch norm (it would couple real and fake pairs). As the encoder: batch norm, no noise."""
    layers: list[nn.Module] = []
    channels_in, channels = 1, config.width
    for scale in range(config.scales):
        if discriminator:
            conv = nn.Conv2d(channels_in, channels, 4, 2, 1)
            layers += [Noise(config.d_noise), _maybe_sn(conv, config.spectral_norm)]
        else:
            layers.append(nn.Conv2d(channels_in, channels, 4, 2, 1, bias=scale == 0))
            if scale > 0:
                layers.append(nn.BatchNorm2d(channels))
        layers.append(nn.LeakyReLU(0.2, True))
        channels_in, channels = channels, channels * 2
    return nn.Sequential(*layers), channels_in


class Encoder(nn.Module):
    """E: each frame on its own -> z_M(t); the paper's frame-wise motion encoder (no z_C)."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.body, channels = _frame_convs(config, discriminator=False)
        self.head = nn.Conv2d(channels, config.dim_z_motion, 4, 1, 0)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        batch, frames = video.shape[:2]
        return self.head(self.body(video.flatten(0, 1))).view(batch, frames, -1)


class _JointDiscriminator(nn.Module):
    """x-path features and z-path features, concatenated, through an MLP to one logit."""

    def __init__(self, config: Config, x_path: nn.Module, x_features: int, z_in: int) -> None:
        super().__init__()
        sn, hidden = config.spectral_norm, config.d_hidden
        self.x_path = x_path
        self.z_path = nn.Sequential(_maybe_sn(nn.Linear(z_in, hidden), sn), nn.LeakyReLU(0.2, True))
        self.joint = nn.Sequential(
            nn.Dropout(config.d_dropout),
            _maybe_sn(nn.Linear(x_features + hidden, hidden), sn),
            nn.LeakyReLU(0.2, True),
            nn.Dropout(config.d_dropout),
            _maybe_sn(nn.Linear(hidden, 1), sn),
        )

    def judge(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.joint(torch.cat([self.x_path(x).flatten(1), self.z_path(z)], 1)).squeeze(1)


class ImageDiscriminator(_JointDiscriminator):
    """D_I(x_t, z_M(t)) on single frames and their motion codes."""

    def __init__(self, config: Config) -> None:
        x_path, channels = _frame_convs(config, discriminator=True)
        super().__init__(config, x_path, channels * 16, config.dim_z_motion)

    def forward(self, frame: torch.Tensor, z_motion: torch.Tensor) -> torch.Tensor:
        """frame (n, 1, H, W), z_motion (n, dim_z_motion) -> logits (n,)."""
        return self.judge(frame, z_motion)


class VideoDiscriminator(_JointDiscriminator):
    """D_V(x, z_M(1..T)): 3-D convs over the video (MoCoGAN's: stride 1 in time, 2 in space) and
    an MLP over the whole motion code."""

    def __init__(self, config: Config) -> None:
        layers: list[nn.Module] = []
        channels_in, channels, frames = 1, config.width, config.frames
        for _ in range(config.scales):
            kernel_t = 4 if frames >= 7 else 1  # shrink time while it stays long enough
            conv = nn.Conv3d(channels_in, channels, (kernel_t, 4, 4), (1, 2, 2), (0, 1, 1))
            layers += [Noise(config.d_noise), _maybe_sn(conv, config.spectral_norm)]
            layers.append(nn.LeakyReLU(0.2, True))
            frames -= kernel_t - 1
            channels_in, channels = channels, channels * 2
        x_features = channels_in * frames * 16
        super().__init__(
            config, nn.Sequential(*layers), x_features, config.frames * config.dim_z_motion
        )

    def forward(self, video: torch.Tensor, z_motion: torch.Tensor) -> torch.Tensor:
        """video (batch, T, 1, H, W), z_motion (batch, T, d) -> logits (batch,)."""
        # Conv3d wants (batch, C, T, H, W)
        return self.judge(video.transpose(1, 2), z_motion.flatten(1))


class MDBiGAN(nn.Module):
    """The four networks in one module, so one state_dict holds the model."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self.generator = Generator(config)
        self.encoder = Encoder(config)
        self.d_image = ImageDiscriminator(config)
        self.d_video = VideoDiscriminator(config)

    def generator_parameters(self) -> list[nn.Parameter]:
        """G and E: the side trained with flipped labels."""
        return [*self.generator.parameters(), *self.encoder.parameters()]

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return [*self.d_image.parameters(), *self.d_video.parameters()]


def init_weights(module: nn.Module) -> None:
    """DCGAN initialisation: convs N(0, 0.02), norm scales N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear)):
            weight = getattr(m, "parametrizations", None)
            target = weight.weight.original if weight is not None else m.weight
            nn.init.normal_(target, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


# --- how the model sees a video -------------------------------------------------------------


def shrink(frames: torch.Tensor, factor: int) -> torch.Tensor:
    """uint8 (n, T, H, W) mean-pooled by `factor` per axis, rounded back to uint8."""
    if factor == 1:
        return frames
    n, t, h, w = frames.shape
    pooled = F.avg_pool2d(frames.view(n * t, 1, h, w).float(), factor)
    return pooled.round_().to(torch.uint8).view(n, t, h // factor, w // factor)


def resident_train_videos(
    data: Path, downsample: int, batch: int, key: str, device: Any
) -> torch.Tensor:
    """The train split's frames, shrunk, on `device` (small enough to stay there, so the GPU
    never waits on a loader); refuses a `batch` larger than the split, naming `key`."""
    rows = training.load_split(data, "train", ["frames"])
    videos = shrink(torch.from_numpy(rows["frames"]), downsample).to(device)
    if batch > len(videos):
        raise StageError(
            f"params.yaml: {key}.batch", f"{batch} videos, but the train split has {len(videos)}"
        )
    return videos


def to_video(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (batch, T, H, W) -> float (batch, T, 1, H, W) in [-1, 1]."""
    return frames.float().div_(127.5).sub_(1.0).unsqueeze(2)
