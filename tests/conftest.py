"""Suite-wide setup."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Tests start `dvc`, and DVC starts stage commands such as `python -m stages.<name>`, as
# subprocesses: put this interpreter's environment first on PATH, so they run in it even when
# pytest was started as `.venv/bin/python -m pytest` without activating the venv.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
