"""Benchmark of the gameplay_clips stage against a plain reference, and its memory vs length.

1. Throughput on the default sample (params.yaml: the gameplay_sample recordings, 44 events):
   recording seconds processed per wall second by `gameplay_clips.build` (1 worker and the default
   workers), side by side with a reference that cuts each clip with one `ffmpeg` subprocess
   (input seek, fps=30 + scale=128:128 to raw RGB, mono f32 audio at the same rate) and reads the
   output files back with numpy. This VM's speed drifts by up to 1.5x from minute to minute, so
   the three runs alternate, `--repeats` times, and each is reported by its best (least
   disturbed) and median wall time; the ratios compare like with like.
2. Peak memory (ru_maxrss of a fresh process) for one recording of 30 s and one of 180 s holding
   the same number of events: the stage seeks, so the peak must not grow with the length.

Run: `python benchmarks/gameplay_clips.py` from the repository root (a few minutes; recordings it
needs are generated into benchmarks/out/ once). The reference needs the ffmpeg CLI
(`make bench` installs it with apt-get; run alone without it, the script stops with that command).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stages.common.params import load_section  # noqa: E402
from stages.common.workers import worker_count  # noqa: E402
from stages.gameplay import clips as gc  # noqa: E402
from stages.gameplay import sample as gs  # noqa: E402

OUT = ROOT / "benchmarks/out/gameplay"
LENGTHS = (30.0, 180.0)  # s, for the memory check
LENGTH_EVENTS = 6
SAMPLE = load_section(gs.Params, "gameplay_sample", ROOT / "params.yaml")
EVENTS = SAMPLE.events.relative_to(SAMPLE.out)  # the events table inside a recordings folder
CLIPS = load_section(gc.Params, "gameplay_clips", ROOT / "params.yaml")


def sample(directory: Path, **changes) -> Path:
    """A gameplay_sample folder (params.yaml's, with `changes`), generated unless it exists."""
    if not (directory / EVENTS).is_file():
        print(f"generating {directory.relative_to(ROOT)} ...", flush=True)
        params = dataclasses.replace(SAMPLE, out=directory, events=directory / EVENTS, **changes)
        gs.build(params)
    return directory


def default_sample() -> Path:
    """The pipeline's sample if `dvc repro` made it, else the same params built here."""
    if (ROOT / SAMPLE.events).is_file():
        return ROOT / SAMPLE.out
    return sample(OUT / "sample")


def clip_params(recordings: Path, workers: int, out: Path) -> gc.Params:
    return dataclasses.replace(
        CLIPS, recordings=recordings, events=recordings / EVENTS, out=out, workers=workers
    )


def run_child(*args: str) -> dict:
    """Run one measurement in a fresh process, so its peak memory is its own."""
    command = [sys.executable, __file__, *args]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_stage_child(recordings: Path, workers: int) -> dict:
    return run_child("--child", str(recordings), str(workers))


def child(recordings: Path, workers: int) -> None:
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        started, cpu = time.perf_counter(), _cpu()
        outcome = gc.build(clip_params(recordings, workers, Path(tmp) / "clips"))
        wall = time.perf_counter() - started
    peak = max(_maxrss(resource.RUSAGE_SELF), _maxrss(resource.RUSAGE_CHILDREN))
    stats = outcome.stats
    result = {
        "wall": wall,
        "cpu": _cpu() - cpu,
        "peak_mb": peak,
        "recording_seconds": stats["recording_seconds"],
        "clips": stats["clips"],
    }
    print(json.dumps(result))


def reference(recordings: Path) -> dict:
    """One ffmpeg process per clip, output read back from files."""
    params = clip_params(recordings, 1, OUT / "unused")  # reads the clip settings only
    specs = gc.parse_rows(gc.read_events(params.events), params)
    clips = [s for s in specs if isinstance(s, gc.ClipSpec)]
    size, rate = params.size, params.audio_rate
    started, cpu = time.perf_counter(), _cpu()
    with tempfile.TemporaryDirectory() as tmp:
        video, audio = Path(tmp) / "v.rgb", Path(tmp) / "a.f32"
        for clip in clips:
            command = [
                *("ffmpeg", "-v", "error", "-y", "-ss", f"{clip.start:.6f}"),
                *("-t", f"{clip.duration:.6f}", "-i", str(recordings / clip.recording)),
                *("-map", "0:v:0", "-vf", f"fps={params.fps},scale={size}:{size}"),
                *("-pix_fmt", "rgb24", "-f", "rawvideo", str(video)),
                *("-map", "0:a:0", "-ac", "1", "-ar", str(rate), "-f", "f32le", str(audio)),
            ]
            subprocess.run(command, check=True)
            frames = np.fromfile(video, np.uint8).reshape(-1, size, size, 3)
            sound = np.fromfile(audio, np.float32)
            assert len(frames) and len(sound)
    return {
        "wall": time.perf_counter() - started,
        "cpu": _cpu() - cpu,
        "peak_mb": _maxrss(resource.RUSAGE_CHILDREN),
        "recording_seconds": sum(gc.probe(p).duration for p in _recordings(recordings)),
        "clips": len(clips),
    }


def _recordings(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix in (".mp4", ".mkv", ".webm"))


def _cpu() -> float:
    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _maxrss(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


def row(name: str, r: dict, ref: dict | None) -> str:
    rate = r["recording_seconds"] / r["wall"]
    ratio = f"{ref['wall'] / r['wall']:6.2f}x" if ref else "     -"
    return (
        f"{name:<34} {r['clips']:>5} {r['wall']:>7.2f} {r['cpu']:>7.2f} {rate:>9.1f}x "
        f"{ratio} {r['peak_mb']:>8.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    recordings = default_sample()
    workers = worker_count(CLIPS.workers)
    header = (
        f"{'run':<34} {'clips':>5} {'wall s':>7} {'cpu s':>7} {'real time':>10} {'vs ref':>7} "
        f"{'peak MB':>8}"
    )
    if shutil.which("ffmpeg") is None:  # a table without its reference would mislead
        sys.exit("ffmpeg CLI not found: the reference needs it (apt-get install -y ffmpeg)")
    runs: dict[str, list[dict]] = {}
    for _ in range(args.repeats):
        runs.setdefault("reference: ffmpeg process per clip", []).append(
            run_child("--reference", str(recordings))
        )
        runs.setdefault("gameplay_clips, 1 worker", []).append(run_stage_child(recordings, 1))
        runs.setdefault(f"gameplay_clips, {workers} workers", []).append(
            run_stage_child(recordings, workers)
        )
    for pick in ("best", "median"):
        chosen = {name: _pick(results, pick) for name, results in runs.items()}
        ref = chosen.get("reference: ffmpeg process per clip")
        print(
            f"\nthroughput on {recordings.relative_to(ROOT)}, {pick} of {args.repeats} "
            f"(machine load: {_load()})"
        )
        print(header)
        for name, result in chosen.items():
            print(row(name, result, None if result is ref else ref))

    print(f"\npeak memory vs recording length ({LENGTH_EVENTS} clips each, 1 worker)")
    print(header)
    for length in LENGTHS:
        directory = sample(
            OUT / f"length-{length:.0f}s",
            seed=1,
            recordings=1,
            length=length,
            event_count=LENGTH_EVENTS,
        )
        result = run_stage_child(directory, 1)
        whole = length * 30 * 128 * 128 * 3 / 2**20
        print(
            row(f"{length:.0f} s recording", result, None)
            + f"   (all frames at once: {whole:.0f} MB)"
        )


def _pick(results: list[dict], pick: str) -> dict:
    """The run with the least wall time, or the median one."""
    ordered = sorted(results, key=lambda r: r["wall"])
    return ordered[0] if pick == "best" else ordered[len(ordered) // 2]


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(Path(sys.argv[2]), int(sys.argv[3]))
    elif len(sys.argv) == 3 and sys.argv[1] == "--reference":
        print(json.dumps(reference(Path(sys.argv[2]))))
    else:
        main()
