"""The CPU kernels of the float libraries, pinned so that float outputs are the same on every CPU.

OpenBLAS, numpy's SIMD loops, oneDNN, MKL and torch's own vector kernels each pick their code by the
CPU they run on, and the kernels of different instruction sets round differently in the last bits:
a PCA fitted on an AVX-512 Xeon differed from one fitted on an AVX2 machine by 1.5e-14, word2vec by
one float32 step, ResNet-152 features by one float16 step. Each library reads a variable, once,
when it loads; `pin()` sets them to the x86-64-v3 level (AVX2 + FMA: every x86 server CPU since
2013-2015), so every such CPU runs the same kernels and writes the same bytes. It runs when the
`stages` package is imported, before any stage module imports numpy or torch.

On a CPU without AVX2 (or not x86-64) nothing is pinned: the libraries keep their own kernels and
float outputs may differ in the last bits (README, "Reproducibility", says which outputs and how
to compare them). A variable the user set is left as it is; `STAGES_NATIVE_KERNELS=1` turns the
pinning off (to measure what it costs, or to test on the CPU's own kernels).
"""

from __future__ import annotations

import os
import platform
import sys
import warnings
from pathlib import Path

# What each library reads, and the x86-64-v3 value. numpy 2.4 names its dispatch groups X86_V3
# (AVX2, FMA3), X86_V4 (AVX-512) and AVX512_ICL / AVX512_SPR; the older AVX512F-style names are
# silently ignored, so they would pin nothing.
X86_64_V3 = {
    "OPENBLAS_CORETYPE": "Haswell",
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "AVX2",
}
LIBRARIES = ("numpy", "torch", "scipy", "gensim")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags as the Linux kernel lists them (empty elsewhere)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def level(flags: set[str], machine: str) -> str | None:
    """ "x86-64-v3" when the CPU runs those kernels, else None (nothing to pin to)."""
    is_x86_64 = machine.lower() in ("x86_64", "amd64")
    return "x86-64-v3" if is_x86_64 and {"avx2", "fma", "bmi2"} <= flags else None


def pin() -> dict[str, str]:
    """Set the pinning variables not already set; returns what is in force (for stats)."""
    if os.environ.get("STAGES_NATIVE_KERNELS") == "1":
        return {}
    if level(cpu_flags(), platform.machine()) is None:
        return {}
    for name, value in X86_64_V3.items():
        os.environ.setdefault(name, value)
    loaded = [name for name in LIBRARIES if name in sys.modules]
    if loaded:  # too late for them to read the variables (child processes still will)
        warnings.warn(
            f"{', '.join(loaded)} imported before stages: this process runs the CPU's own "
            "kernels, so its float results may differ in the last bits from `dvc repro`'s",
            stacklevel=3,
        )
    return {name: os.environ[name] for name in X86_64_V3}


def record() -> dict[str, object]:
    """Which kernels this process runs, for a stage's stats: the pins and what OpenBLAS chose."""
    import numpy  # noqa: F401  (threadpoolctl lists the BLAS of loaded libraries only)
    from threadpoolctl import threadpool_info

    blas = sorted(
        {f"{i['internal_api']} {i.get('architecture')}" for i in threadpool_info()
         if i["user_api"] == "blas"}
    )  # fmt: skip
    pinned = {name: os.environ[name] for name in X86_64_V3 if name in os.environ}
    return {"kernels": "pinned" if pinned else "native", "pinned": pinned, "blas": blas}
