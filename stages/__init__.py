"""The pipeline's stages: one package per paper area, `common` for what they share (README.md).

Importing any stage first pins the float libraries' CPU kernels (`stages.common.kernels`), before
numpy or torch loads, so a stage's float outputs are the same bytes on every x86-64-v3 CPU.
"""

from stages.common import kernels

kernels.pin()
