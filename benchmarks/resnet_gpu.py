"""GPU check and throughput of the ResNet-152 video feature extractor (issue 5).

1. Parity: our plain-torch ResNet-152 against torchvision's on the same weights (torchvision's
   state_dict loaded into ours, strict) and images, fp32 with TF32 off: relative error < 1e-3.
2. Model alone, frames/s: (a) fp32 batch 64 NCHW as the reference extractor ran it (PyTorch's
   default, which lets cuDNN use TF32 for convolutions), also strict fp32 (TF32 off); (b) bf16
   autocast + channels_last, batch 64 and 256; at 224x224 and 224x398. Goal: (b) >= 2x (a).
3. Pipeline: synthetic 454x256 30 fps H.264 videos (HowTo100M's normalised size); decode-only
   frames/s (decord in DataLoader workers, 1 fps, short side 224) and end to end (decode + model,
   `stages.mcn.video_pipeline.extract`). Goal: end to end >= 80% of min(decode-only, model-only).

Prints a table with ratios and writes JSON. Needs a CUDA GPU and torchvision (GPU machine only:
torchvision cannot be imported next to the CPU torch of the dev machines).
    python benchmarks/resnet_gpu.py --out reports/mcn/gpu_benchmark.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.mcn.resnet import resnet152
from stages.mcn.video_pipeline import FrameModel, chunk_loader, extract

SHAPES = {"224x224": (224, 224), "224x398": (224, 398)}


def parity(device: torch.device) -> dict:
    """Max relative error of our features vs torchvision's, same weights, fp32 without TF32."""
    import torchvision

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    reference = torchvision.models.resnet152(weights=None)
    for m in reference.modules():  # non-trivial BN statistics, so a swapped buffer would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
            m.bias.data.normal_(0, 0.1)
    ours = resnet152()
    out = {"state_dict_keys_equal": list(ours.state_dict()) == list(reference.state_dict())}
    ours.load_state_dict(reference.state_dict(), strict=True)
    reference.fc = torch.nn.Identity()
    reference, ours = reference.to(device).eval(), ours.to(device).eval()
    with torch.inference_mode():
        for name, (h, w) in SHAPES.items():
            x = torch.randn(8, 3, h, w, generator=torch.Generator().manual_seed(1)).to(device)
            a, b = ours.features(x), reference(x)
            rel = ((a - b).norm(dim=1) / b.norm(dim=1)).max().item()
            out[name] = {"max_relative_error": rel, "pass": rel < 1e-3}
            # and what the production path (bf16 autocast, channels_last) costs in agreement
            with torch.autocast("cuda", dtype=torch.bfloat16):
                c = ours.to(memory_format=torch.channels_last).features(
                    x.contiguous(memory_format=torch.channels_last)
                )
            ours = ours.to(memory_format=torch.contiguous_format)
            cos = torch.nn.functional.cosine_similarity(c.float(), b, dim=1).min().item()
            out[name]["bf16_channels_last_min_cosine"] = cos
    torch.backends.cudnn.allow_tf32 = True  # PyTorch's default, restored
    return out


def time_model(model: torch.nn.Module, x: torch.Tensor, bf16: bool, seconds: float) -> float:
    """Frames/s of `model.features` on a fixed batch, CUDA events, after warm-up."""
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        for _ in range(3):
            model.features(x)
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        iters, elapsed = 0, 0.0
        start.record()
        while elapsed < seconds:
            for _ in range(5):
                model.features(x)
            iters += 5
            end.record()
            end.synchronize()
            elapsed = start.elapsed_time(end) / 1e3
    return len(x) * iters / elapsed


def model_only(device: torch.device, seconds: float) -> dict:
    torch.backends.cudnn.benchmark = True
    model = resnet152().to(device).eval()
    out = {}
    for name, (h, w) in {**SHAPES, "224x397": (224, 397)}.items():
        row = {}
        for label, batch, bf16, channels_last, tf32 in (
            ("fp32_ref_b64", 64, False, False, True),
            ("fp32_strict_b64", 64, False, False, False),
            ("bf16_cl_b64", 64, True, True, True),
            ("bf16_cl_b256", 256, True, True, True),
        ):
            if name == "224x397" and not label.startswith("bf16_cl_b256"):
                continue  # only needed as the end-to-end comparison
            torch.backends.cudnn.allow_tf32 = tf32
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            net = model.to(memory_format=fmt)
            x = torch.randn(batch, 3, h, w, device=device).contiguous(memory_format=fmt)
            row[label] = time_model(net, x, bf16, seconds)
        torch.backends.cudnn.allow_tf32 = True
        if "fp32_ref_b64" in row:
            row["speedup_bf16_cl_b64_vs_ref"] = row["bf16_cl_b64"] / row["fp32_ref_b64"]
            row["speedup_bf16_cl_b256_vs_ref"] = row["bf16_cl_b256"] / row["fp32_ref_b64"]
        out[name] = row
    return out


def make_video(args: tuple[str, int, int]) -> str:
    """A 454x256 30 fps H.264 video of moving gradients, blocks and grain (realistic bitrate)."""
    import av

    path, seconds, seed = args
    rng = np.random.default_rng(seed)
    h, w = 256, 454
    ys, xs = np.mgrid[0:h, 0:w]
    grain = rng.integers(0, 24, (8, h, w, 3), dtype=np.uint8)
    with av.open(path, "w") as out:
        stream = out.add_stream("libx264", rate=30, options={"crf": "23", "preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(seconds * 30):
            base = ((xs + 3 * i) % 256)[..., None] * np.array([1.0, 0.6, 0.3]) + (ys % 64)[
                ..., None
            ]
            frame = np.clip(base, 0, 230).astype(np.uint8) + grain[i % 8]
            x0 = (5 * i) % (w - 80)
            frame[60:140, x0 : x0 + 80] = (200, 40, 40)
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            out.mux(stream.encode(vf))
        out.mux(stream.encode())
    return path


def pipeline(device: torch.device, videos: int, seconds: int, workers: int) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="bench_videos_"))
    started = time.perf_counter()
    jobs = [(str(folder / f"v{i:04d}.mp4"), seconds, i) for i in range(videos)]
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        files = tuple(pool.map(make_video, jobs))
    made = time.perf_counter() - started
    frames = videos * seconds
    out = {
        "videos": videos,
        "seconds_each": seconds,
        "frames": frames,
        "workers": workers,
        "encode_seconds": made,
        "source": "454x256 30 fps H.264 (libx264 veryfast crf 23)",
    }

    def decode_only() -> float:
        t = time.perf_counter()
        n = sum(
            len(c.frames)
            for c in chunk_loader(files, 224, 32, workers, pin=True)
            if c.status == "frames"
        )
        assert n == frames, (n, frames)
        return n / (time.perf_counter() - t)

    frame_model = FrameModel(resnet152().eval(), str(device))
    extract(files[:2], frame_model, 224, 256, 32, 2)  # warm-up: cuDNN autotune, worker start
    decode_only()  # warm the page cache for both timed runs alike
    out["decode_only_fps_runs"] = [decode_only() for _ in range(2)]

    def end_to_end() -> float:
        t = time.perf_counter()
        got = extract(files, frame_model, 224, 256, 32, workers)
        torch.cuda.synchronize()
        assert sum(len(f) for f in got.features if f is not None) == frames
        return frames / (time.perf_counter() - t)

    out["end_to_end_fps_runs"] = [end_to_end() for _ in range(2)]
    out["decode_only_fps"] = max(out["decode_only_fps_runs"])  # best of two, both alike
    out["end_to_end_fps"] = max(out["end_to_end_fps_runs"])
    # largest child: a decode worker or a video encoder (an upper bound for a decode worker)
    out["child_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_benchmark.json"))
    parser.add_argument("--videos", type=int, default=48)
    parser.add_argument("--seconds", type=int, default=90, help="length of each video")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 3))
    parser.add_argument("--time", type=float, default=3.0, help="seconds per model timing")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("resnet_gpu: needs a CUDA GPU (run it through the device tool)")
    device = torch.device("cuda")
    result = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
    }
    result["parity"] = parity(device)
    print(json.dumps(result["parity"], indent=1), flush=True)
    result["model_only_fps"] = model_only(device, args.time)
    print(json.dumps(result["model_only_fps"], indent=1), flush=True)
    result["pipeline"] = pipeline(device, args.videos, args.seconds, args.workers)
    p = result["pipeline"]
    model_fps = result["model_only_fps"]["224x397"]["bf16_cl_b256"]
    p["model_only_bf16_cl_b256_fps_same_shape"] = model_fps
    p["end_to_end_vs_min_decode_model"] = p["end_to_end_fps"] / min(p["decode_only_fps"], model_fps)
    frames_1m = 1_000_000 * 300  # 1M videos x 5 min at 1 fps
    result["projection_1M_videos_5min"] = {
        "frames": frames_1m,
        "gpu_hours_end_to_end": frames_1m / p["end_to_end_fps"] / 3600,
        "gpu_hours_if_model_bound": frames_1m / model_fps / 3600,
        "note": f"one GPU with {args.workers} decode workers on {os.cpu_count()} cores",
    }
    print("\n| measure | 224x224 | 224x398 |\n|---|---|---|")
    m = result["model_only_fps"]
    for key in (
        "fp32_ref_b64",
        "fp32_strict_b64",
        "bf16_cl_b64",
        "bf16_cl_b256",
        "speedup_bf16_cl_b64_vs_ref",
        "speedup_bf16_cl_b256_vs_ref",
    ):
        print(f"| {key} | {m['224x224'][key]:.1f} | {m['224x398'][key]:.1f} |")
    print(
        f"\ndecode-only {p['decode_only_fps']:.0f} fps, model-only (224x397, bf16 cl b256) "
        f"{model_fps:.0f} fps, end-to-end {p['end_to_end_fps']:.0f} fps: "
        f"ratio {p['end_to_end_vs_min_decode_model']:.2f} (goal >= 0.80)"
    )
    print(
        f"projection: {result['projection_1M_videos_5min']['gpu_hours_end_to_end']:.0f} GPU-hours "
        "for 1M videos x 5 min"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
