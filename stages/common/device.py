"""Where a stage runs: the GPU when torch sees one, the CPU otherwise, and a record of it.

`resolve_device` turns a stage's `device` param (auto, cpu or cuda) into the device to use;
`device_record` says what it was for the stage's metrics (the GPU's name on cuda: speeds and
bf16 results are only comparable on the same card).
"""

from __future__ import annotations

from stages.common.errors import StageError


def resolve_device(device: str, key: str) -> str:
    """auto -> cuda when torch sees a GPU, else cpu; an explicit cuda without one is an error.

    `key` names the param (e.g. "video_features.device") for the error message.
    """
    import torch

    if device not in ("auto", "cpu", "cuda"):
        raise StageError(f"params.yaml: {key}", f"expected auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise StageError(f"params.yaml: {key}", "cuda asked for, but torch sees no GPU")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def device_record(device: str) -> dict[str, str]:
    """{"device": ...}, plus the GPU's name on cuda, for a stage's metrics."""
    record = {"device": device}
    if device == "cuda":
        import torch

        record["gpu"] = torch.cuda.get_device_name()
    return record
