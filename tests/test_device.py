"""Device choice: auto follows torch, an explicit cuda without a GPU is a clear error."""

from __future__ import annotations

import pytest
import torch

from stages.common.device import device_record, resolve_device
from stages.common.errors import StageError


@pytest.fixture
def gpu(monkeypatch):
    """Pretend torch sees (True) or does not see (False) a GPU named 'Test GPU'."""

    def set_gpu(present: bool) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: present)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "Test GPU")

    return set_gpu


@pytest.mark.parametrize(("present", "expected"), [(False, "cpu"), (True, "cuda")])
def test_auto_takes_the_gpu_when_present(gpu, present, expected):
    gpu(present)
    assert resolve_device("auto", "stage.device") == expected


def test_explicit_choices(gpu):
    gpu(True)
    assert resolve_device("cpu", "stage.device") == "cpu"
    assert resolve_device("cuda", "stage.device") == "cuda"


def test_cuda_without_a_gpu_names_the_param(gpu):
    gpu(False)
    with pytest.raises(StageError, match="cuda asked for, but torch sees no GPU") as info:
        resolve_device("cuda", "video_features.device")
    assert info.value.where == "params.yaml: video_features.device"
    with pytest.raises(StageError, match="expected auto, cpu or cuda, got 'tpu'"):
        resolve_device("tpu", "video_features.device")


def test_record_names_the_gpu_on_cuda_only(gpu):
    gpu(True)
    assert device_record("cpu") == {"device": "cpu"}
    assert device_record("cuda") == {"device": "cuda", "gpu": "Test GPU"}
