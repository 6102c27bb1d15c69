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
