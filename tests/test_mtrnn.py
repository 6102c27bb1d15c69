"""MTRNN (seed 000): the leaky update against its closed form, recognition, learning."""

from __future__ import annotations

import torch

from stages.gameplay.mtrnn import MTRNN, Config, recognise

SMALL = Config(io=4, fast=6, slow=3, tau_io=2.0, tau_fast=5.0, tau_slow=70.0)


def model(config: Config = SMALL, sequences: int = 2, scale: float = 1.0, seed: int = 0) -> MTRNN:
    torch.manual_seed(seed)
    net = MTRNN(config, sequences)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(scale)
    return net


def test_one_step_is_the_closed_form_leaky_update():
    """u(t+1) = (1 - 1/tau) u(t) + (1/tau)(W y(t) + b), y = tanh(u), IO's activity replaced by
    the input; the slow group hears only Cf and Cs, IO only IO and Cf."""
    net = model()
    u = torch.randn(2, 13)
    x = torch.randn(2, 4)
    y = torch.tanh(u)
    fast, slow = y[:, 4:10], y[:, 10:]
    w_io, w_f, w_s = net.to_io.weight, net.to_fast.weight, net.to_slow.weight
    drive_io = x @ w_io[:, :4].T + fast @ w_io[:, 4:].T + net.to_io.bias
    drive_f = x @ w_f[:, :4].T + fast @ w_f[:, 4:10].T + slow @ w_f[:, 10:].T + net.to_fast.bias
    drive_s = fast @ w_s[:, :6].T + slow @ w_s[:, 6:].T + net.to_slow.bias
    expected = torch.cat([
        (1 - 1 / 2) * u[:, :4] + (1 / 2) * drive_io,
        (1 - 1 / 5) * u[:, 4:10] + (1 / 5) * drive_f,
        (1 - 1 / 70) * u[:, 10:] + (1 / 70) * drive_s,
    ], 1)  # fmt: skip
    assert torch.allclose(net.step(u, x), expected, atol=1e-6)


def test_shapes_and_every_parameter_learns():
    net = model()
    inputs = torch.randn(2, 7, 4).tanh()
    out = net(inputs, net.initial_slow)
    assert out.shape == (2, 7, 4)
    assert net.generate(inputs[:, 0], net.initial_slow, 5).shape == (2, 5, 4)
    out.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_bptt_learns_two_sequences_told_apart_by_their_cs0():
    """Two different sequences from the same first input: only Cs(0) can tell them apart, and
    training weights + Cs(0) by BPTT drives the next-step error far down."""
    t = torch.linspace(0, 3, 16)
    seqs = torch.stack([
        torch.stack([torch.sin(t + k), torch.cos(2 * t), torch.sin(3 * t + k), t / 4], 1)
        for k in (0.0, 1.5)
    ]) * 0.8  # fmt: skip
    seqs[:, 0] = seqs[0, 0]
    net = model(Config(io=4, fast=16, slow=4, tau_slow=8.0))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    first = None
    for _ in range(400):
        loss = torch.nn.functional.mse_loss(net(seqs[:, :-1], net.initial_slow), seqs[:, 1:])
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05 * first


def test_recognition_recovers_the_cs0_of_a_sequence_the_network_generated():
    """Generate closed loop from a known Cs(0); with the weights frozen, recognition finds a Cs(0)
    that regenerates the sequence and lies near the true one."""
    net = model(Config(io=4, fast=12, slow=3, tau_slow=6.0), scale=3.0, seed=1)
    truth = torch.tensor([[0.8, -0.6, 0.4]])
    first = torch.full((1, 4), 0.1)
    with torch.no_grad():
        sequence = torch.cat([first[:, None], net.generate(first, truth, 24)], 1)
    weights = [p.clone() for p in net.parameters()]
    found = recognise(
        net, sequence, torch.tensor([25]), 600, 0.05, torch.Generator().manual_seed(0)
    )
    assert all(torch.equal(a, b) for a, b in zip(weights, net.parameters(), strict=True))
    with torch.no_grad():
        again = net.generate(first, found, 24)
    assert torch.nn.functional.mse_loss(again, sequence[:, 1:]).item() < 1e-3
    assert (found - truth).abs().max().item() < 0.1
