"""The IDX format of the official MNIST files (`t10k-images-idx3-ubyte[.gz]`): reader and writer."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from stages.common.atomic import atomic_file
from stages.common.errors import StageError

UBYTE = 0x08  # the only element type the MNIST files use


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """Read an unsigned-byte IDX file (optionally gzipped) of `ndim` dimensions, validating it.

    Checks the magic number, the element type, the dimension count and that the payload has
    exactly the bytes the header promises; any mismatch is a `StageError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise StageError(path, "IDX file not found")
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as exc:
        raise StageError(path, f"cannot decompress ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise StageError(path, "not an IDX file (bad magic number)")
    if raw[2] != UBYTE or raw[3] != ndim:
        raise StageError(
            path,
            f"expected unsigned bytes in {ndim} dimensions, header says type 0x{raw[2]:02x} "
            f"in {raw[3]} dimensions (magic {int.from_bytes(raw[:4], 'big')})",
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise StageError(path, f"truncated header ({len(raw)} bytes)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise StageError(
            path,
            f"header promises shape {shape} ({expected} bytes) but the file has {len(raw)} "
            "bytes (truncated or wrong file)",
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def read_mnist(images: str | Path, labels: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Digits (n, 28, 28) uint8 and labels (n,) from an MNIST images/labels IDX pair."""
    digits = read_idx(images, ndim=3)
    classes = read_idx(labels, ndim=1)
    if digits.shape[1:] != (28, 28):
        raise StageError(images, f"expected 28x28 digits, got {digits.shape[1:]}")
    if len(digits) != len(classes):
        raise StageError(labels, f"{len(classes)} labels for {len(digits)} images in {images}")
    if classes.max(initial=0) > 9:
        raise StageError(labels, f"label {classes.max()} outside 0..9")
    return digits, classes


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write `array` as an unsigned-byte IDX file (gzipped if `path` ends in .gz), atomically.

    The gzip header carries no name and no time, so the same array always gives the same bytes.
    """
    path = Path(path)
    header = struct.pack(">BBBB", 0, 0, UBYTE, array.ndim)
    header += b"".join(struct.pack(">I", d) for d in array.shape)
    raw = header + np.ascontiguousarray(array, np.uint8).tobytes()
    with atomic_file(path) as handle:
        handle.write(gzip.compress(raw, mtime=0) if path.suffix == ".gz" else raw)
    return path
