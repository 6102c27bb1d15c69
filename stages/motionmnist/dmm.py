"""A convolutional deep Markov model for video prediction (seed 001): Krishnan et al. 2017,
"Structured Inference Networks for Nonlinear State Space Models", with a convolutional frame
encoder and emission for images.

Generative model, per video: z_1 ~ p(z_1 | z_0) with a learned z_0, z_t ~ N(mu(z_{t-1}),
sigma(z_{t-1})) through the paper's gated transition, x_t ~ Bernoulli(decoder(z_t)) per pixel.
Inference (the paper's structured "ST-R" network): a GRU runs backward over the encoded frames,
and a combiner mixes its state at t with z_{t-1} into q(z_t | z_{t-1}, x_{t:T}). Training maximises
the ELBO: the Bernoulli log-likelihood of every frame minus the KL of each q(z_t) from the
transition's p(z_t | z_{t-1}) (both Gaussian: closed form), the KL weighted by `kl_weight`
(annealed from 0 by the trainer).

Prediction from `context` frames: the inference network on those frames alone, its means fed
forward (z_t = mean of q), then the transition's means for the horizon, each decoded to pixel
probabilities. Frames are floats in [0, 1] (the rendered digits are near-binary, hence Bernoulli).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

LAYERS = 3  # stride-2 convolutions: size -> size / 8


@dataclass(frozen=True)
class Config:
    size: int  # frame side in pixels (a multiple of 8)
    width: int  # channels of the first convolution, doubled per layer
    z_dim: int  # the latent state
    hidden: int  # frame features, GRU state, transition and combiner width


class FrameEncoder(nn.Module):
    def __init__(self, c: Config) -> None:
        super().__init__()
        widths = [1] + [c.width * 2**i for i in range(LAYERS)]
        self.convs = nn.Sequential(*[
            layer
            for a, b in itertools.pairwise(widths)
            for layer in (nn.Conv2d(a, b, 4, 2, 1), nn.LeakyReLU(0.2))
        ])  # fmt: skip
        self.out = nn.Linear(widths[-1] * (c.size // 2**LAYERS) ** 2, c.hidden)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(n, T, H, W) -> (n, T, hidden)."""
        n, t, h, w = frames.shape
        features = self.convs(frames.reshape(n * t, 1, h, w)).flatten(1)
        return F.leaky_relu(self.out(features), 0.2).view(n, t, -1)


class Emission(nn.Module):
    def __init__(self, c: Config) -> None:
        super().__init__()
        self.side = c.size // 2**LAYERS
        widths = [c.width * 2**i for i in reversed(range(LAYERS))] + [1]
        self.inp = nn.Linear(c.z_dim, widths[0] * self.side**2)
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(widths):
            layers += [nn.ConvTranspose2d(a, b, 4, 2, 1), nn.LeakyReLU(0.2)]
        self.deconvs = nn.Sequential(*layers[:-1])  # logits out: no activation after the last

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(n, T, z_dim) -> pixel logits (n, T, H, W)."""
        n, t, _ = z.shape
        x = F.leaky_relu(self.inp(z.reshape(n * t, -1)), 0.2)
        x = self.deconvs(x.view(n * t, -1, self.side, self.side))
        return x.view(n, t, *x.shape[-2:])


class GatedTransition(nn.Module):
    """p(z_t | z_{t-1}): a gate mixes a linear map of z_{t-1} with a nonlinear proposal (the
    paper's eq. 5), so the model can keep the parts of the state that move linearly."""

    def __init__(self, c: Config) -> None:
        super().__init__()
        self.gate = nn.Sequential(
            nn.Linear(c.z_dim, c.hidden), nn.ReLU(), nn.Linear(c.hidden, c.z_dim)
        )
        self.proposal = nn.Sequential(
            nn.Linear(c.z_dim, c.hidden), nn.ReLU(), nn.Linear(c.hidden, c.z_dim)
        )
        self.linear = nn.Linear(c.z_dim, c.z_dim)
        self.scale = nn.Linear(c.z_dim, c.z_dim)
        with torch.no_grad():  # start as the identity map: a still state until trained
            self.linear.weight.copy_(torch.eye(c.z_dim))
            self.linear.bias.zero_()

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gate = torch.sigmoid(self.gate(z))
        proposal = self.proposal(z)
        mean = (1 - gate) * self.linear(z) + gate * proposal
        return mean, F.softplus(self.scale(F.relu(proposal))) + 1e-4


class Combiner(nn.Module):
    """q(z_t | z_{t-1}, h_t) with h_t the backward GRU's state (the paper's eq. 6)."""

    def __init__(self, c: Config) -> None:
        super().__init__()
        self.from_z = nn.Linear(c.z_dim, c.hidden)
        self.mean = nn.Linear(c.hidden, c.z_dim)
        self.scale = nn.Linear(c.hidden, c.z_dim)

    def forward(self, z: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        combined = 0.5 * (torch.tanh(self.from_z(z)) + h)
        return self.mean(combined), F.softplus(self.scale(combined)) + 1e-4


class DMM(nn.Module):
    def __init__(self, c: Config) -> None:
        super().__init__()
        if c.size % 2**LAYERS:
            raise ValueError(f"frame size {c.size} is not a multiple of {2**LAYERS}")
        self.config = c
        self.encoder = FrameEncoder(c)
        self.backward_rnn = nn.GRU(c.hidden, c.hidden, batch_first=True)
        self.combiner = Combiner(c)
        self.transition = GatedTransition(c)
        self.emission = Emission(c)
        self.z_0 = nn.Parameter(torch.zeros(c.z_dim))  # p(z_1) = transition(z_0)
        self.z_q_0 = nn.Parameter(torch.zeros(c.z_dim))  # the combiner's z_0

    def infer(
        self, frames: torch.Tensor, sample: bool, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q over a video: (z (n, T, z), mean, scale), z drawn (sample) or the means."""
        n, t = frames.shape[:2]
        h, _ = self.backward_rnn(self.encoder(frames).flip(1))
        h = h.flip(1)  # h[:, t] summarises frames t..T-1
        z = self.z_q_0.expand(n, -1)
        zs, means, scales = [], [], []
        for step in range(t):
            mean, scale = self.combiner(z, h[:, step])
            if sample:
                noise = torch.randn(mean.shape, generator=generator, device=mean.device)
                z = mean + scale * noise
            else:
                z = mean
            zs.append(z)
            means.append(mean)
            scales.append(scale)
        return torch.stack(zs, 1), torch.stack(means, 1), torch.stack(scales, 1)

    def prior(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """p(z_t | z_{t-1}) for every t, given the sampled path z (n, T, z_dim)."""
        previous = torch.cat([self.z_0.expand(len(z), 1, -1), z[:, :-1]], 1)
        return self.transition(previous)

    def loss(
        self, frames: torch.Tensor, kl_weight: float, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The negative ELBO per video (KL weighted), and its parts, for frames in [0, 1]."""
        z, q_mean, q_scale = self.infer(frames, sample=True, generator=generator)
        p_mean, p_scale = self.prior(z)
        logits = self.emission(z)
        reconstruction = F.binary_cross_entropy_with_logits(
            logits.float(), frames.float(), reduction="sum"
        ) / len(frames)
        kl = gaussian_kl(q_mean, q_scale, p_mean, p_scale).sum() / len(frames)
        return reconstruction + kl_weight * kl, {"reconstruction": reconstruction, "kl": kl}

    @torch.no_grad()
    def predict(self, context: torch.Tensor, horizon: int) -> torch.Tensor:
        """Pixel probabilities (n, horizon, H, W) of the frames after `context` (n, C, H, W)."""
        z, _, _ = self.infer(context, sample=False)
        state, future = z[:, -1], []
        for _ in range(horizon):
            state, _ = self.transition(state)
            future.append(state)
        return torch.sigmoid(self.emission(torch.stack(future, 1)).float())


def gaussian_kl(
    q_mean: torch.Tensor, q_scale: torch.Tensor, p_mean: torch.Tensor, p_scale: torch.Tensor
) -> torch.Tensor:
    """KL(N(q_mean, q_scale^2) || N(p_mean, p_scale^2)) per dimension, in closed form."""
    ratio = (q_scale / p_scale) ** 2
    return 0.5 * (ratio + ((q_mean - p_mean) / p_scale) ** 2 - 1.0 - torch.log(ratio))
