"""Conditional MoCoGAN for zero-shot video generation (issue 18, seed 001).

MoCoGAN (Tulyakov et al. 2018, "MoCoGAN: Decomposing Motion and Content for Video Generation")
draws a video from one content code z_C (fixed over the video) and a motion code z_M(t) per frame
from a recurrent motion generator R_M, renders each frame with one image generator G_I on
[z_C, z_M(t)], and trains against an image discriminator D_I (single frames) and a video
discriminator D_V (3-D convs over the clip). Its categorical variant feeds an action code z_A to
R_M and gives D_V an auxiliary head that must recover it (InfoGAN's Q, the AC-GAN recipe of Odena
et al. 2017).

Here both factors are conditioned, each on its own class only:

- content: z_C = [E_C(digit), z_style], E_C a learned embedding of the digit class, z_style ~
  N(0, I) (the handwriting); the motion class never reaches z_C;
- motion: z_M(1..T) from a GRU whose initial state is a map of E_M(motion) and whose input at
  every step is [E_M(motion), eps(t)], eps(t) ~ N(0, I) afresh (MoCoGAN's fresh noise per step:
  MotionMNIST's jitter and rotation are drawn per frame); the digit never reaches z_M;
- D_I has an auxiliary head classifying the digit of a frame, D_V one classifying the motion of
  a clip (AC-GAN: trained on real videos, and G is trained to make them name the requested
  classes).

The factorisation is the point: a (digit, motion) pair never seen in training is still a digit
code G_I has rendered and a motion code it has moved, so it can be generated zero-shot.

Shapes: videos are (batch, T, 1, H, W) in [-1, 1]; z_C (batch, dim_z_content + dim_z_style);
z_M (batch, T, dim_z_motion). Noise is drawn in a fixed order (z_style, then eps(1..T)) from the
caller's generator, so the same generator state gives the same codes whatever the classes are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

DIGITS = 10
MOTIONS = 8


@dataclass(frozen=True)
class Config:
    frames: int  # T
    size: int  # frame height and width; a power of two >= 16
    dim_z_content: int  # E_C(digit), the class part of z_C
    dim_z_style: int  # the N(0, I) part of z_C
    dim_z_motion: int  # z_M(t), the GRU's state
    dim_e_motion: int  # E_M(motion), fed to the GRU every step
    dim_eps: int  # eps(t), fresh per step
    width: int  # channels of G_I's last hidden layer and of D's first; doubled per scale
    d_noise: float  # std of Gaussian instance noise on the discriminators' inputs (training)
    clip_stride: int  # D_V judges every clip_stride-th frame (MoCoGAN trains on sub-clips)

    def __post_init__(self) -> None:
        if self.size < 16 or self.size & (self.size - 1):
            raise ValueError(f"size must be a power of two >= 16, got {self.size}")
        if self.frames < 4:
            raise ValueError(
                f"frames must be at least 4 (D_V's temporal kernel), got {self.frames}"
            )
        if self.clip_stride < 1 or self.frames % self.clip_stride or self.clip_frames < 4:
            raise ValueError(
                f"clip_stride {self.clip_stride} must divide {self.frames} frames into clips of"
                " at least 4"
            )

    @property
    def clip_frames(self) -> int:
        """Frames of the clips D_V judges."""
        return self.frames // self.clip_stride

    @property
    def scales(self) -> int:
        """Stride-2 layers between 4x4 and the frame size (3 for 32x32)."""
        return self.size.bit_length() - 3


class ContentCode(nn.Module):
    """z_C = [E_C(digit), z_style]: the digit class and N(0, I) handwriting, nothing else."""

    def __init__(self, c: Config) -> None:
        super().__init__()
        self.config = c
        self.embed = nn.Embedding(DIGITS, c.dim_z_content)

    def forward(
        self, digit: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        style = torch.randn(
            len(digit), self.config.dim_z_style, device=digit.device, generator=generator
        )
        return torch.cat([self.embed(digit), style], 1)


class MotionGenerator(nn.Module):
    """R_M: z_M(t) = h_t, h_t = GRU([E_M(m), eps(t)], h_{t-1}), h_0 = tanh(W E_M(m)); the motion
    class only, with fresh noise every step (MoCoGAN's recurrence with its categorical z_A)."""

    def __init__(self, c: Config) -> None:
        super().__init__()
        self.config = c
        self.embed = nn.Embedding(MOTIONS, c.dim_e_motion)
        self.initial = nn.Linear(c.dim_e_motion, c.dim_z_motion)
        self.cell = nn.GRUCell(c.dim_e_motion + c.dim_eps, c.dim_z_motion)

    def forward(
        self, motion: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        c, n = self.config, len(motion)
        eps = torch.randn(n, c.frames, c.dim_eps, device=motion.device, generator=generator)
        e = self.embed(motion)
        h = torch.tanh(self.initial(e))
        states = []
        for t in range(c.frames):
            h = self.cell(torch.cat([e, eps[:, t]], 1), h)
            states.append(h)
        return torch.stack(states, 1)


class FrameGenerator(nn.Module):
    """G_I, a DCGAN generator: [z_C, z_M(t)] as a 1x1 map -> 4x4 -> ... -> size x size, tanh."""

    def __init__(self, c: Config) -> None:
        super().__init__()
        top = c.width * 2 ** (c.scales - 1)
        z = c.dim_z_content + c.dim_z_style + c.dim_z_motion
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(z, top, 4, 1, 0, bias=False),
            nn.BatchNorm2d(top),
            nn.ReLU(True),
        ]
        channels = top
        for _ in range(c.scales - 1):
            layers += [
                nn.ConvTranspose2d(channels, channels // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(channels // 2),
                nn.ReLU(True),
            ]
            channels //= 2
        layers += [nn.ConvTranspose2d(channels, 1, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z_content: torch.Tensor, z_motion: torch.Tensor) -> torch.Tensor:
        batch, frames, _ = z_motion.shape
        tiled = z_content[:, None, :].expand(-1, frames, -1)
        z = torch.cat([tiled, z_motion], 2).flatten(0, 1)[:, :, None, None]
        out = self.net(z)
        return out.view(batch, frames, *out.shape[1:])


class Generator(nn.Module):
    """G(digit, motion): z_C from the digit, z_M from the motion, frames from both."""

    def __init__(self, c: Config) -> None:
        super().__init__()
        self.config = c
        self.content = ContentCode(c)
        self.motion = MotionGenerator(c)
        self.frames = FrameGenerator(c)

    def codes(
        self, digit: torch.Tensor, motion: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(z_C, z_M): z_style drawn first, then eps(1..T), whatever the classes."""
        z_content = self.content(digit, generator)
        return z_content, self.motion(motion, generator)

    def forward(
        self, digit: torch.Tensor, motion: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Videos (n, T, 1, H, W) of the requested classes (n,) each."""
        return self.frames(*self.codes(digit, motion, generator))


class Noise(nn.Module):
    """Gaussian instance noise while training, from torch's global stream (saved on resume)."""

    def __init__(self, sigma: float) -> None:
        super().__init__()
        self.sigma = sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.sigma > 0:
            return x + self.sigma * torch.randn_like(x)
        return x


class ImageDiscriminator(nn.Module):
    """D_I: a frame -> (real/fake logit, digit logits): DCGAN convs, two heads (AC-GAN). The
    digit head reads the features max-pooled over the map: the digit is the same wherever it
    has moved to (a head on the 4x4 map learnt it far slower: 0.28 against 0.66 of real frames
    right after 150 steps; 0.72 with the stride-1 conv in front)."""

    def __init__(self, c: Config) -> None:
        super().__init__()
        # a stride-1 conv first: the digit's strokes are a pixel or two wide at 32 px
        layers: list[nn.Module] = [Noise(c.d_noise), nn.Conv2d(1, c.width, 3, 1, 1)]
        layers.append(nn.LeakyReLU(0.2, True))
        channels_in, channels = c.width, c.width
        for _ in range(c.scales):
            layers += [nn.Conv2d(channels_in, channels, 4, 2, 1), nn.LeakyReLU(0.2, True)]
            channels_in, channels = channels, channels * 2
        self.body = nn.Sequential(*layers)
        self.real = nn.Conv2d(channels_in, 1, 4, 1, 0)
        self.digit = nn.Linear(channels_in, DIGITS)

    def forward(self, frame: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frame (n, 1, H, W) -> logits (n,), digit logits (n, 10)."""
        h = self.body(frame)
        return self.real(h).flatten(), self.digit(h.amax((2, 3)))


class VideoDiscriminator(nn.Module):
    """D_V: a clip -> (real/fake logit, motion logits): MoCoGAN's 3-D convs (stride 1 in time,
    2 in space), two heads (its categorical variant's auxiliary classifier). A clip is every
    `clip_stride`-th frame of a video (MoCoGAN's D_V, too, sees clips, not whole videos): G then
    renders only the frames a step judges, half the work at stride 2 on the CPU."""

    def __init__(self, c: Config) -> None:
        super().__init__()
        layers: list[nn.Module] = [Noise(c.d_noise)]
        channels_in, channels, frames = 1, c.width, c.clip_frames
        for _ in range(c.scales):
            kernel_t = 4 if frames >= 7 else 1  # shrink time while it stays long enough
            conv = nn.Conv3d(channels_in, channels, (kernel_t, 4, 4), (1, 2, 2), (0, 1, 1))
            layers += [conv, nn.LeakyReLU(0.2, True)]
            frames -= kernel_t - 1
            channels_in, channels = channels, channels * 2
        self.body = nn.Sequential(*layers)
        features = channels_in * frames * 16
        self.real = nn.Linear(features, 1)
        self.motion = nn.Linear(features, MOTIONS)

    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """video (n, T, 1, H, W) -> logits (n,), motion logits (n, 8)."""
        h = self.body(video.transpose(1, 2)).flatten(1)  # Conv3d wants (n, C, T, H, W)
        return self.real(h).squeeze(1), self.motion(h)


class CMoCoGAN(nn.Module):
    """The generator and both discriminators in one module, so one state_dict holds the model."""

    def __init__(self, c: Config) -> None:
        super().__init__()
        self.config = c
        self.generator = Generator(c)
        self.d_image = ImageDiscriminator(c)
        self.d_video = VideoDiscriminator(c)

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return [*self.d_image.parameters(), *self.d_video.parameters()]


def init_weights(model: CMoCoGAN) -> None:
    """DCGAN initialisation of the generator: convs and linears N(0, 0.02), norm scales
    N(1, 0.02), biases 0; embeddings N(0, 1) (codes on the scale of the N(0, I) beside them).
    The discriminators keep torch's default (Kaiming-uniform) weights: under N(0, 0.02) D_I's
    digit head had learnt nothing after 125 steps (cross-entropy 2.29 of 2.30), and an AC-GAN
    generator can only learn the classes as fast as its discriminator's heads do."""
    for m in model.generator.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 1.0)


def losses(
    model: CMoCoGAN,
    real: torch.Tensor,
    fake: torch.Tensor,
    digit: torch.Tensor,
    motion: torch.Tensor,
    frames_idx: torch.Tensor,
    weight_class: float,
    side: str,
) -> dict[str, torch.Tensor]:
    """The AC-GAN losses of one side ("d" or "g"), fp32.

    D: real frames and clips -> 1, fake -> 0 (BCE), and the auxiliary heads classify the *real*
    frames' digit and clips' motion (so they learn only what real data shows). G: fake -> 1, and
    the heads must name the requested digit and motion on the fake ones. `frames_idx` (n, k)
    picks the k frames of each video D_I judges."""
    rows = torch.arange(len(real), device=real.device)[:, None]
    frame_digits = digit[:, None].expand_as(frames_idx).flatten()
    bce = F.binary_cross_entropy_with_logits
    if side == "d":
        ri, rd = model.d_image(real[rows, frames_idx].flatten(0, 1))
        fi, _ = model.d_image(fake[rows, frames_idx].flatten(0, 1))
        rv, rm = model.d_video(real)
        fv, _ = model.d_video(fake)
        image = bce(ri.float(), torch.ones_like(ri, dtype=torch.float32)) + bce(
            fi.float(), torch.zeros_like(fi, dtype=torch.float32)
        )
        video = bce(rv.float(), torch.ones_like(rv, dtype=torch.float32)) + bce(
            fv.float(), torch.zeros_like(fv, dtype=torch.float32)
        )
        digit_ce = F.cross_entropy(rd.float(), frame_digits)
        motion_ce = F.cross_entropy(rm.float(), motion)
    else:
        fi, fd = model.d_image(fake[rows, frames_idx].flatten(0, 1))
        fv, fm = model.d_video(fake)
        image = bce(fi.float(), torch.ones_like(fi, dtype=torch.float32))
        video = bce(fv.float(), torch.ones_like(fv, dtype=torch.float32))
        digit_ce = F.cross_entropy(fd.float(), frame_digits)
        motion_ce = F.cross_entropy(fm.float(), motion)
    total = image + video + weight_class * (digit_ce + motion_ce)
    return {"loss": total, "image": image, "video": video, "digit_ce": digit_ce,
            "motion_ce": motion_ce}  # fmt: skip
