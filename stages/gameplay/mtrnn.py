"""MTRNN (Yamashita & Tani 2008), as seed 000 uses it on the CAE's feature sequences.

Three groups of leaky-integrator units with their own time constants, wired IO <-> fast context
(Cf) <-> slow context (Cs); the slow context never touches IO directly. Per unit

    u(t+1) = (1 - 1/tau) u(t) + (1/tau) (sum_j w_j y_j(t) + b),    y = tanh(u)

with tau_IO = 2, tau_fast = 5, tau_slow = 70 (../shared/specs/gameplay.md). Every training
sequence owns a learnable initial slow state Cs(0); weights and all Cs(0) learn by BPTT on
next-step prediction. Recognition freezes the weights and fits only a new sequence's Cs(0);
generation runs closed loop from a Cs(0), feeding each output back as the next input.

Some IO channels may be unobserved (the audio-visual MTRNN recognising from the pictures alone):
`forward` takes a `known` mask, and an unknown channel's input is the network's own previous output
for it, closed loop on that channel while the known ones are teacher-forced.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Config:
    """Sizes and time constants; the defaults are the paper's."""

    io: int = 128  # the CAE bottleneck
    fast: int = 100
    slow: int = 30
    tau_io: float = 2.0
    tau_fast: float = 5.0
    tau_slow: float = 70.0

    def __post_init__(self) -> None:
        for name in ("tau_io", "tau_fast", "tau_slow"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (a leak rate 1/tau above 1 diverges)")


class MTRNN(nn.Module):
    """The network; the Cs(0) of the training sequences live in `initial_slow` (one row each)."""

    def __init__(self, config: Config, sequences: int) -> None:
        super().__init__()
        c = config
        self.config = config
        # what each group hears: IO <- (IO, Cf); Cf <- (IO, Cf, Cs); Cs <- (Cf, Cs)
        self.to_io = nn.Linear(c.io + c.fast, c.io)
        self.to_fast = nn.Linear(c.io + c.fast + c.slow, c.fast)
        self.to_slow = nn.Linear(c.fast + c.slow, c.slow)
        self.initial_slow = nn.Parameter(torch.zeros(sequences, c.slow))
        self.register_buffer(
            "leak",
            torch.cat([
                torch.full((c.io,), 1 / c.tau_io),
                torch.full((c.fast,), 1 / c.tau_fast),
                torch.full((c.slow,), 1 / c.tau_slow),
            ]),
        )  # fmt: skip

    def initial_state(self, cs0: torch.Tensor) -> torch.Tensor:
        """Internal states u(0): IO and Cf at rest (0), Cs at the sequence's Cs(0)."""
        c = self.config
        rest = torch.zeros(cs0.shape[0], c.io + c.fast, device=cs0.device, dtype=cs0.dtype)
        return torch.cat([rest, cs0], 1)

    def wiring(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The three groups' weights as one matrix over [input, Cf, Cs] activities, zero where the
        paper's wiring has no connection, and their biases: a step is then one matrix product
        instead of three, which halves a CPU training step (its ops are small: overhead rules)."""
        c = self.config
        zeros = self.to_io.weight.new_zeros
        weight = torch.cat([
            torch.cat([self.to_io.weight, zeros(c.io, c.slow)], 1),
            self.to_fast.weight,
            torch.cat([zeros(c.slow, c.io), self.to_slow.weight], 1),
        ])  # fmt: skip
        bias = torch.cat([self.to_io.bias, self.to_fast.bias, self.to_slow.bias])
        return weight, bias

    def step(
        self,
        u: torch.Tensor,
        x: torch.Tensor,
        wiring: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """One leaky update of the states u (batch, io+fast+slow) with IO's activity replaced by
        the input x (teacher forcing) or by the previous output (closed loop). Loops pass
        `wiring()` once instead of rebuilding it every step."""
        weight, bias = wiring if wiring is not None else self.wiring()
        activity = torch.cat([x, torch.tanh(u[:, self.config.io :])], 1)
        return torch.lerp(u, torch.addmm(bias, activity, weight.t()), self.leak)

    def forward(
        self,
        inputs: torch.Tensor,
        cs0: torch.Tensor,
        known: torch.Tensor | None = None,
        feedback: float = 0.0,
    ) -> torch.Tensor:
        """Teacher-forced next-step predictions: inputs (batch, T, io) -> outputs (batch, T, io),
        output t the prediction of input t+1. From step 1 on, `feedback` in [0, 1] mixes the
        previous output into the input (1 = closed loop), and with `known` (io,) bool the
        channels not known take the previous output alone."""
        u, wiring = self.initial_state(cs0), self.wiring()
        outputs: list[torch.Tensor] = []
        for t in range(inputs.shape[1]):
            x = inputs[:, t]
            if outputs and feedback:
                x = (1 - feedback) * x + feedback * outputs[-1]
            if known is not None and outputs:
                x = torch.where(known, x, outputs[-1])
            u = self.step(u, x, wiring)
            outputs.append(torch.tanh(u[:, : self.config.io]))
        return torch.stack(outputs, 1)

    def generate(self, first: torch.Tensor, cs0: torch.Tensor, steps: int) -> torch.Tensor:
        """Closed loop from the first input: (batch, io) -> (batch, steps, io), each output fed
        back as the next input."""
        u, x, outputs, wiring = self.initial_state(cs0), first, [], self.wiring()
        for _ in range(steps):
            u = self.step(u, x, wiring)
            x = torch.tanh(u[:, : self.config.io])
            outputs.append(x)
        return torch.stack(outputs, 1)


def prediction_loss(
    outputs: torch.Tensor,
    targets: torch.Tensor,
    lengths: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean squared next-step error over each sequence's real steps (targets t = 1..length-1);
    with `weights` (io,), each channel's error weighted (the mean is over the weight sum)."""
    steps = torch.arange(targets.shape[1], device=targets.device)
    real = (steps[None, :] < (lengths[:, None] - 1)).float()[..., None]
    if weights is None:
        weights = torch.ones(targets.shape[2], device=targets.device)
    return ((outputs - targets) ** 2 * real * weights).sum() / (real.sum() * weights.sum())


def recognise(
    model: MTRNN,
    sequences: torch.Tensor,
    lengths: torch.Tensor,
    iterations: int,
    lr: float,
    generator: torch.Generator,
    known: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fit Cs(0) for new sequences (batch, T, io; the first `lengths` steps real) with the weights
    frozen: the MTRNN's recognition. Minimises the teacher-forced next-step error by Adam; with
    `known` (io,) bool, on the known channels only, the others running closed loop (their inputs
    in `sequences` are used at step 0 alone). Starts from small random states.
    """
    slow = model.config.slow
    start = 0.01 * torch.randn(sequences.shape[0], slow, generator=generator)
    cs0 = nn.Parameter(start.to(sequences.device))
    optimiser = torch.optim.Adam([cs0], lr=lr)
    frozen = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        for _ in range(iterations):
            outputs = model(sequences[:, :-1], cs0, known)
            weights = None if known is None else known.float()
            loss = prediction_loss(outputs, sequences[:, 1:], lengths, weights)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    finally:
        for p, flag in zip(model.parameters(), frozen, strict=True):
            p.requires_grad_(flag)
    return cs0.detach()
