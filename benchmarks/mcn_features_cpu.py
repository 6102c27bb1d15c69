"""CPU throughput of the MCN feature path: decode, model, end to end, and the audio front end.

The CPU path is what CI and the embedded stand-in run; the GPU figures come from
`benchmarks/resnet_gpu.py` (device machine). Prints frames/s side by side with ratios:
end to end against min(decode-only, model-only) (how well decoding overlaps the model), and the
audio front end in seconds of audio per second against librosa's own melspectrogram.
    python benchmarks/mcn_features_cpu.py [--seconds 40] [--threads 0]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.resnet_gpu import make_video
from stages.mcn.audio_features import log_mel
from stages.mcn.resnet import load_resnet152
from stages.mcn.video_pipeline import FrameModel, chunk_loader, extract


def timed(fn, repeat: int = 1) -> float:
    """Best wall time of `repeat` calls (the machine may be shared)."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=40, help="test video length (x batch)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = default")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = Path(tempfile.mkdtemp(prefix="mcn_cpu_bench_"))
    video = make_video((str(folder / "v.mp4"), args.seconds, 0))  # 454x256, 30 fps, H.264
    frames = args.seconds
    files = (video,)

    def decode() -> None:
        n = sum(
            len(c.frames)
            for c in chunk_loader(files, 224, 32, 0, pin=False)
            if c.status == "frames"
        )
        assert n == frames

    decode_fps = frames / timed(decode, 2)
    model = FrameModel(load_resnet152(None, 0), "cpu")
    x = torch.zeros((args.batch, 224, 397, 3), dtype=torch.uint8)
    model([x[:2]], pad_to=2)  # warm-up
    model_fps = args.batch / timed(lambda: model([x], pad_to=args.batch), 2)
    e2e_fps = frames / timed(lambda: extract(files, model, 224, args.batch, 32, 1))

    wave = np.random.default_rng(0).standard_normal(16000 * 60).astype(np.float32)

    def reference_mel() -> None:
        import librosa

        librosa.power_to_db(
            librosa.feature.melspectrogram(
                y=wave, sr=16000, n_fft=400, hop_length=160, window="hamming", n_mels=40, fmin=20
            ),
            ref=np.max,
        )

    ours_audio = 60 / timed(lambda: log_mel(wave), 3)
    ref_audio = 60 / timed(reference_mel, 3)

    print(
        f"CPU, {torch.get_num_threads()} torch threads; test video 454x256 30 fps, "
        f"{args.seconds} s -> {frames} frames at 1 fps, short side 224 (397x224)"
    )
    print(f"{'measure':44} {'value':>10}")
    print(f"{'decode only (decord, 1 fps, in-process) fps':44} {decode_fps:10.2f}")
    print(
        f"{'model only (ResNet-152 fp32, batch ' + str(args.batch) + ') fps':44} {model_fps:10.2f}"
    )
    print(f"{'end to end (1 decode worker + model) fps':44} {e2e_fps:10.2f}")
    print(f"{'  ratio e2e / min(decode, model)':44} {e2e_fps / min(decode_fps, model_fps):10.2f}")
    print(f"{'audio front end, s of audio per s':44} {ours_audio:10.1f}")
    print(f"{'  librosa melspectrogram (reference)':44} {ref_audio:10.1f}")
    print(f"{'  ratio ours / reference':44} {ours_audio / ref_audio:10.2f}")
    hours = 1_000_000 * 300 / e2e_fps / 3600
    print(f"projection on this CPU: {hours:,.0f} core-pair-hours for 1M videos x 5 min")


if __name__ == "__main__":
    main()
