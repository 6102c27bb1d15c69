"""The CPU kernel pins: applied before the float libraries load, and they fix the float bits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stages.common import kernels

REPO = Path(__file__).resolve().parents[1]
PINNABLE = kernels.level(kernels.cpu_flags(), os.uname().machine) is not None

# X^T X and its eigenvectors for a fixed X, with OpenBLAS on one thread: the PCA of lip_features in
# miniature. Printed as digests of the float64 bytes.
PROBE = """
import stages, hashlib, json, numpy as np, threadpoolctl
with threadpoolctl.threadpool_limits(1):
    x = np.random.default_rng(0).standard_normal((300, 120))
    gram = x.T @ x
    vectors = np.linalg.eigh(gram)[1]
    logs = np.log10(np.abs(x).astype(np.float32) + 1e-3)
blas = sorted(i.get("architecture") for i in threadpoolctl.threadpool_info())
print(json.dumps({"blas": blas, **{k: hashlib.sha256(v.tobytes()).hexdigest()[:16]
      for k, v in (("gram", gram), ("eigh", np.abs(vectors)), ("log10", logs))}}))
"""
# What PROBE prints under the x86-64-v3 pins: the same on every AVX2 CPU (recorded on an AVX-512
# Xeon, where the CPU's own kernels give other bits for all three).
PINNED = {"gram": "5c3bf4c9f98616db", "eigh": "6fc2e9eed73d3450", "log10": "ffafe8d66a8d5566"}


def probe(**env: str) -> dict:
    """PROBE in a fresh process whose environment holds none of this process's pins."""
    ours = {*kernels.X86_64_V3, "STAGES_NATIVE_KERNELS"}
    clean = {k: v for k, v in os.environ.items() if k not in ours}
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**clean, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


def test_level_needs_avx2_fma_and_bmi2_on_x86_64():
    assert kernels.level({"avx2", "fma", "bmi2", "avx512f"}, "x86_64") == "x86-64-v3"
    assert kernels.level({"avx2", "fma", "bmi2"}, "AMD64") == "x86-64-v3"
    assert kernels.level({"avx", "sse4_2"}, "x86_64") is None
    assert kernels.level({"avx2", "fma", "bmi2"}, "aarch64") is None


def test_cpu_flags_reads_the_kernels_list(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n\nprocessor\t: 1\n")
    assert kernels.cpu_flags(info) == {"fpu", "sse2", "avx2", "fma"}
    assert kernels.cpu_flags(tmp_path / "missing") == set()


@pytest.mark.skipif(not PINNABLE, reason="no AVX2: nothing is pinned on this CPU")
@pytest.mark.skipif(os.environ.get("STAGES_NATIVE_KERNELS") == "1", reason="pinning turned off")
def test_this_process_runs_the_pinned_kernels():
    """conftest imports stages before numpy: in-process results equal `dvc repro`'s."""
    record = kernels.record()
    assert record["kernels"] == "pinned" and record["blas"] == ["openblas Haswell"]
    assert os.environ["NPY_DISABLE_CPU_FEATURES"] == kernels.X86_64_V3["NPY_DISABLE_CPU_FEATURES"]


@pytest.mark.skipif(not PINNABLE, reason="no AVX2: nothing is pinned on this CPU")
def test_pinned_kernels_give_the_recorded_bits_and_a_user_setting_wins():
    pinned = probe()
    assert pinned["blas"] == ["Haswell"]
    assert {k: pinned[k] for k in PINNED} == PINNED
    assert probe(OPENBLAS_CORETYPE="Sandybridge")["blas"] == ["Sandybridge"]
    native = probe(STAGES_NATIVE_KERNELS="1")
    if "avx512f" in kernels.cpu_flags():  # the CPU's own kernels differ: the pins do something
        assert native["blas"] != ["Haswell"]
        assert native["gram"] != PINNED["gram"] and native["log10"] != PINNED["log10"]
