"""ResNet-152 and DaveNet: torchvision-compatible names, shapes, batch invariance, masked means."""

from __future__ import annotations

import math

import pytest
import torch

from stages.mcn.davenet import ResDavenet
from stages.mcn.resnet import load_resnet152


@pytest.fixture(scope="module")
def resnet():
    return load_resnet152(None, seed=0)


def test_resnet152_has_torchvisions_parameter_names_and_count(resnet):
    state = resnet.state_dict()
    # torchvision.models.resnet152: 60,192,808 parameters (its model card), these exact keys
    assert sum(p.numel() for p in resnet.parameters()) == 60_192_808
    for key in (
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.num_batches_tracked",
        "layer3.35.conv3.weight",
        "layer4.2.bn3.bias",
        "fc.weight",
        "fc.bias",
    ):
        assert key in state
    assert "layer3.36.conv1.weight" not in state
    assert len(state) == 932  # 467 weights/biases + 155 BN x 3 buffers


def test_checkpoint_round_trip_is_strict(resnet, tmp_path):
    path = tmp_path / "resnet152.pth"
    torch.save(resnet.state_dict(), path)
    loaded = load_resnet152(path, seed=1)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(loaded.features(x), resnet.features(x))
    state = resnet.state_dict()
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(RuntimeError, match=r"extra\.weight"):
        load_resnet152(path, seed=1)


def test_random_weights_depend_on_the_seed_only(resnet):
    torch.manual_seed(123)  # global state must not matter
    assert torch.equal(load_resnet152(None, 0).conv1.weight, resnet.conv1.weight)
    assert not torch.equal(load_resnet152(None, 1).conv1.weight, resnet.conv1.weight)


def test_a_frames_features_do_not_depend_on_its_batch_mates(resnet):
    """Why the stored bytes on CPU do not depend on batch composition or worker count.

    Batches are padded to a fixed size: at one batch shape, a frame gets the same bytes whatever
    the other frames are (the batch *size* may change them: oneDNN picks kernels by shape).
    """
    torch.manual_seed(0)
    x = torch.randn(4, 3, 64, 96)
    shuffled = torch.cat([x[2:3], torch.zeros(1, 3, 64, 96), x[0:1], x[3:4]])
    with torch.inference_mode():
        a, b = resnet.features(x), resnet.features(shuffled)
    assert a.shape == (4, 2048)
    assert torch.equal(a[2], b[0]) and torch.equal(a[0], b[2]) and torch.equal(a[3], b[3])


def test_resnet_forward_gives_logits(resnet):
    with torch.inference_mode():
        assert resnet(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


@pytest.mark.parametrize("frames", [16, 17, 1000, 3072])
def test_davenet_downsamples_time_by_16(frames):
    model = ResDavenet().eval()
    with torch.inference_mode():
        out = model(torch.randn(1, 40, frames))
    assert out.shape == (1, 1024, math.ceil(frames / 16))


def test_davenet_embedding_averages_only_valid_steps():
    torch.manual_seed(0)
    model = ResDavenet().eval()
    spec = torch.randn(3, 40, 160)
    n_frames = torch.tensor([160, 33, 1])
    with torch.inference_mode():
        out = model(spec)
        emb = model.embed(spec, n_frames)
    for i, valid in enumerate((10, 3, 1)):  # ceil(n / 16)
        torch.testing.assert_close(emb[i], out[i, :, :valid].mean(1))
