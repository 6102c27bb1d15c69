"""The conv-autoencoder of seed 000: shapes, ranges, gradients, and it learns a batch."""

from __future__ import annotations

import pytest
import torch

from stages.gameplay.cae import CAE, Config


def test_shapes_and_ranges_of_the_papers_sizes():
    cae = CAE(Config())
    frames = torch.rand(2, 3, 128, 128)
    features = cae.encode(frames)
    assert features.shape == (2, 128) and features.abs().max() < 1
    out = cae.decode(features)
    assert out.shape == (2, 3, 128, 128) and out.min() >= 0 and out.max() <= 1
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in cae.encoder) == 5
    assert sum(isinstance(m, torch.nn.Conv2d) for m in cae.decoder) == 5


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    cae = CAE(Config(size=32, channels=(4, 4, 8, 8, 8), bottleneck=6))
    cae(torch.rand(3, 3, 32, 32)).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in cae.parameters())


def test_overfits_one_batch_beyond_its_mean_frame():
    """Four different frames (a colour in one half each): the CAE memorises them, far below the
    error of outputting their mean frame (what a CAE that learnt nothing converges to)."""
    torch.manual_seed(0)
    cae = CAE(Config(size=32, channels=(8, 8, 16, 16, 16), bottleneck=8))
    frames = torch.zeros(4, 3, 32, 32)
    frames[0, 0, :16] = frames[1, 1, 16:] = frames[2, 2, :, :16] = frames[3, :, :, 16:] = 1.0
    mean_frame_error = torch.nn.functional.mse_loss(frames.mean(0).expand_as(frames), frames)
    opt = torch.optim.Adam(cae.parameters(), 3e-3)
    for _ in range(300):
        loss = torch.nn.functional.mse_loss(cae(frames), frames)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * mean_frame_error.item()


def test_a_size_that_does_not_halve_five_times_is_refused():
    with pytest.raises(ValueError, match="does not halve"):
        Config(size=100)
