"""A disentangling sequential VAE with adversarial classifiers (seed 001; after Li & Mandt 2018,
"Disentangled Sequential Autoencoder", with the lab's adversarial classifiers).

Generative model, per video: a static latent z_s ~ N(0, I) (one per video: the digit), a dynamic
latent z_t per frame from a learned prior p(z_t | z_<t) (an LSTM over the previous z's: the
motion), and x_t ~ Bernoulli(decoder([z_s, z_t])) per pixel. Inference: a convolutional frame
encoder, a bidirectional LSTM over the frames; q(z_s | x_1:T) from its two end states, q(z_t | x)
from its output at t. Training maximises the ELBO (Bernoulli log-likelihood minus the KLs of
q(z_s) from N(0, I) and of each q(z_t) from the prior, both Gaussian: closed form).

The adversarial classifiers make the split explicit: one predicts the motion from z_s, the other
the digit from z_1..z_T (the view the evaluation's probes take). They are trained to be right,
while the encoder is trained to leave them at chance (their predictions pushed toward uniform),
so the motion cannot hide in the static latent nor the digit in the dynamic ones.

Frames are floats in [0, 1], (n, T, H, W). Encoder and decoder are DCGAN's (batch norm between
the convolutions): without it, as in the DMM's, a 2-core CPU run of a few hundred steps sits on
the plateau where every frame is decoded as the mean frame (BCE 1,925 per video after 150 steps
as a plain autoencoder, 1,271 with it).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from stages.motionmnist.dmm import gaussian_kl

LAYERS = 3  # stride-2 convolutions: size -> size / 8


@dataclass(frozen=True)
class Config:
    size: int  # frame side in pixels (a multiple of 8)
    frames: int  # T, the digit adversary's input length
    width: int  # channels of the first convolution, doubled per layer
    hidden: int  # frame features, LSTM and classifier width
    static_dim: int  # z_s
    dynamic_dim: int  # z_t
    motions: int = 8  # classes of the motion adversary
    digits: int = 10  # classes of the digit adversary


class FrameEncoder(nn.Module):
    """(n, T, H, W) -> (n, T, hidden): each frame through stride-2 convolutions and a linear map."""

    def __init__(self, c: Config) -> None:
        super().__init__()
        widths = [1] + [c.width * 2**i for i in range(LAYERS)]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(widths)):
            layers.append(nn.Conv2d(a, b, 4, 2, 1, bias=i == 0))
            layers += [nn.BatchNorm2d(b)] if i else []  # not on the pixels themselves (DCGAN)
            layers.append(nn.LeakyReLU(0.2))
        self.convs = nn.Sequential(*layers)
        features = widths[-1] * (c.size // 2**LAYERS) ** 2
        self.out = nn.Sequential(nn.Linear(features, c.hidden), nn.LeakyReLU(0.2))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        n, t, h, w = frames.shape
        return self.out(self.convs(frames.reshape(n * t, 1, h, w)).flatten(1)).view(n, t, -1)


class FrameDecoder(nn.Module):
    """(n, T, z) -> pixel logits (n, T, H, W): a linear map to a small image, then stride-2
    transposed convolutions."""

    def __init__(self, c: Config) -> None:
        super().__init__()
        self.side = c.size // 2**LAYERS
        widths = [c.width * 2**i for i in reversed(range(LAYERS))] + [1]
        cells = widths[0] * self.side**2
        z = c.static_dim + c.dynamic_dim
        self.inp = nn.Sequential(nn.Linear(z, cells), nn.BatchNorm1d(cells), nn.ReLU())
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(widths):
            layers.append(nn.ConvTranspose2d(a, b, 4, 2, 1, bias=b == 1))
            layers += [nn.BatchNorm2d(b), nn.ReLU()] if b != 1 else []  # logits out
        self.deconvs = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        n, t, _ = z.shape
        x = self.deconvs(self.inp(z.reshape(n * t, -1)).view(n * t, -1, self.side, self.side))
        return x.view(n, t, *x.shape[-2:])


def gaussian_head(features: int, dim: int) -> nn.Linear:
    """One linear map to a Gaussian's mean and pre-softplus scale; the scale starts small
    (softplus(-3) = 0.05), so the decoder first sees the codes rather than the noise."""
    head = nn.Linear(features, 2 * dim)
    with torch.no_grad():
        head.bias[dim:] = -3.0
    return head


def split_gaussian(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean, scale = out.chunk(2, -1)
    return mean, F.softplus(scale) + 1e-4


def classifier(inputs: int, hidden: int, classes: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, classes))


class SequentialVAE(nn.Module):
    def __init__(self, c: Config) -> None:
        super().__init__()
        if c.size % 2**LAYERS:
            raise ValueError(f"frame size {c.size} is not a multiple of {2**LAYERS}")
        self.config = c
        self.encoder = FrameEncoder(c)
        self.rnn = nn.LSTM(c.hidden, c.hidden, batch_first=True, bidirectional=True)
        self.static_head = gaussian_head(2 * c.hidden, c.static_dim)
        self.dynamic_head = gaussian_head(2 * c.hidden, c.dynamic_dim)
        self.prior_cell = nn.LSTMCell(c.dynamic_dim, c.hidden)
        self.prior_head = gaussian_head(c.hidden, c.dynamic_dim)
        self.decoder = FrameDecoder(c)
        self.motion_adversary = classifier(c.static_dim, c.hidden, c.motions)
        self.digit_adversary = classifier(c.frames * c.dynamic_dim, c.hidden, c.digits)

    def vae_parameters(self) -> list[nn.Parameter]:
        """Everything but the adversaries: what the ELBO and the confusion terms train."""
        return [p for n, p in self.named_parameters() if "adversary" not in n]

    def adversary_parameters(self) -> list[nn.Parameter]:
        return [*self.motion_adversary.parameters(), *self.digit_adversary.parameters()]

    def infer(
        self, frames: torch.Tensor
    ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """q(z_s) and q(z_t): ((static mean, scale) (n, s), (dynamic mean, scale) (n, T, d))."""
        h, _ = self.rnn(self.encoder(frames))
        half = self.config.hidden
        # the forward direction's last state and the backward direction's first: both have
        # read the whole video
        summary = torch.cat([h[:, -1, :half], h[:, 0, half:]], 1)
        return split_gaussian(self.static_head(summary)), split_gaussian(self.dynamic_head(h))

    def prior(self, z_dynamic: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """p(z_t | z_<t) for every t given the path z (n, T, d); z_0 = 0."""
        n, t, d = z_dynamic.shape
        state = (
            z_dynamic.new_zeros(n, self.config.hidden),
            z_dynamic.new_zeros(n, self.config.hidden),
        )
        previous, out = z_dynamic.new_zeros(n, d), []
        for step in range(t):
            state = self.prior_cell(previous, state)
            out.append(self.prior_head(state[0]))
            previous = z_dynamic[:, step]
        return split_gaussian(torch.stack(out, 1))

    def decode(self, z_static: torch.Tensor, z_dynamic: torch.Tensor) -> torch.Tensor:
        """Pixel logits (n, T, H, W) from z_s (n, s), tiled over frames, and z_t (n, T, d)."""
        tiled = z_static[:, None].expand(-1, z_dynamic.shape[1], -1)
        return self.decoder(torch.cat([tiled, z_dynamic], 2))

    def adversaries(
        self, static: torch.Tensor, dynamic: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Motion logits from z_s (n, motions); digit logits from z_1..z_T (n, digits)."""
        return self.motion_adversary(static), self.digit_adversary(dynamic.flatten(1))

    def loss(
        self,
        frames: torch.Tensor,
        kl_weight: float,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """The negative ELBO per video (KLs weighted), its parts, and the posterior means
        (z_s, z_t) the adversaries judge."""
        (s_mean, s_scale), (d_mean, d_scale) = self.infer(frames)

        def draw(mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            return mean + scale * torch.randn(mean.shape, generator=generator, device=mean.device)

        z_static, z_dynamic = draw(s_mean, s_scale), draw(d_mean, d_scale)
        p_mean, p_scale = self.prior(z_dynamic)
        logits = self.decode(z_static, z_dynamic)
        n = len(frames)
        reconstruction = (
            F.binary_cross_entropy_with_logits(logits.float(), frames.float(), reduction="sum") / n
        )
        kl_static = gaussian_kl(s_mean, s_scale, torch.zeros_like(s_mean), torch.ones_like(s_scale))
        kl_dynamic = gaussian_kl(d_mean, d_scale, p_mean, p_scale)
        kl = (kl_static.sum() + kl_dynamic.sum()) / n
        parts = {
            "reconstruction": reconstruction,
            "kl_static": kl_static.sum() / n,
            "kl_dynamic": kl_dynamic.sum() / n,
        }
        return reconstruction + kl_weight * kl, parts, (s_mean, d_mean)

    @torch.no_grad()
    def swap(self, static_from: torch.Tensor, dynamic_from: torch.Tensor) -> torch.Tensor:
        """Pixel probabilities of the video with the static latent of `static_from` and the
        dynamic latents of `dynamic_from` (posterior means), both (n, T, H, W) in [0, 1]."""
        (z_static, _), _ = self.infer(static_from)
        _, (z_dynamic, _) = self.infer(dynamic_from)
        return torch.sigmoid(self.decode(z_static, z_dynamic).float())


def confusion(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the predictions against the uniform distribution: least when the
    classifier is at chance (what the encoder minimises, rather than maximising the classifier's
    own loss, which has no floor and makes the game oscillate)."""
    return -F.log_softmax(logits.float(), -1).mean()
