"""Lip-feature extraction throughput (video frames/s on one core, decode included).

Encodes a few talker videos (720x480 H.264, as the embedded corpus) into benchmarks/out/, then
times, per frame: decoding + grey 55x55 ROI crop with our PyAV reader, the same with decord (the
reference reader), and the features (2-D DCT, 100 zig-zag coefficients, PCA to 30 dims).

    python benchmarks/lip_features_speed.py [--videos 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stages.common.media import read_gray_frames, write_media  # noqa: E402
from stages.common.seeding import rng  # noqa: E402
from stages.lipspeech import talker  # noqa: E402
from stages.lipspeech.lip_transform import dct2, fit_pca, zigzag  # noqa: E402
from stages.lipspeech.sample import GOP  # noqa: E402

BOX = (333, 253, 55, 55)
OUT = ROOT / "benchmarks/out/lip"


def make_videos(count: int) -> list[Path]:
    OUT.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = OUT / f"talker{i}.mp4"
        if not path.exists():
            generator = rng(2026, "benchmark-lip", i)
            utt = talker.random_utterance(generator, 3.5, 4.0)
            frames = talker.render_frames(utt, generator, 1.5, int(utt.duration * 29.97))
            write_media(path, frames, talker.FPS, crf=18, preset="ultrafast", gop=GOP)
        paths.append(path)
    return paths


def read_decord(path: Path) -> np.ndarray:
    import decord

    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    x, y, w, h = BOX
    rgb = reader.get_batch(list(range(len(reader)))).asnumpy()[:, y : y + h, x : x + w]
    # BT.601 luma, as FFmpeg's grey conversion.
    return np.round(rgb @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)


def timed(fn, paths: list[Path]) -> tuple[float, list[np.ndarray]]:
    start = time.perf_counter()
    out = [fn(p) for p in paths]
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=3)
    args = parser.parse_args()
    paths = make_videos(args.videos)
    with threadpool_limits(1):
        ours_s, rois = timed(lambda p: read_gray_frames(p, BOX), paths)
        decord_s, decord_rois = timed(read_decord, paths)
        frames = sum(len(r) for r in rois)
        all_rois = np.concatenate(rois)
        coefficients = zigzag(55, 55)[:100]
        start = time.perf_counter()
        selected = dct2(all_rois)[:, coefficients[:, 0], coefficients[:, 1]]
        mean, basis, _ = fit_pca(selected - selected.mean(axis=0), 30, None)
        (selected - selected.mean(axis=0) - mean) @ basis.T
        features_s = time.perf_counter() - start
    agree = np.abs(np.concatenate(decord_rois).astype(int) - all_rois).mean()
    print(f"{frames} frames of 720x480 H.264 in {len(paths)} videos; one core")
    print(f"{'step':<44}{'frames/s':>10}")
    print(f"{'decode + grey ROI, decord (reference)':<44}{frames / decord_s:>10.0f}")
    print(f"{'decode + grey ROI, PyAV (stages.common.media)':<44}{frames / ours_s:>10.0f}")
    print(f"{'DCT + 100 coefficients + PCA fit/project':<44}{frames / features_s:>10.0f}")
    total = ours_s + features_s
    print(f"{'lip features, decode included':<44}{frames / total:>10.0f}")
    print(f"decode speed-up over decord: {decord_s / ours_s:.2f}x")
    print(f"whole extraction: {frames / total / 29.97:.1f}x real time (29.97 fps)")
    print(f"mean |grey difference| PyAV vs decord ROI: {agree:.2f} grey levels")


if __name__ == "__main__":
    main()
