"""A synthetic narrated "how-to" corpus: the embedded stand-in for HowTo100M, YouCook2 and MSR-VTT.

Each video is a run of clips separated by short gaps. In a clip one object (a coloured shape)
performs one action; the caption names both; the sound track plays the object's timbre (partials
of its own pitch) with the action's rhythm (bounce impacts, shaking pulses, swells...), panned with
the object's position. So the three modalities agree the way narrated videos do, and a model has
something to learn (`../shared/specs/mcn.md`).

Three corpora: `train` (HowTo100M-like, several clips per video), `eval_close` (YouCook2-like: same
look, sound and words, fresh videos and templates) and `eval_shifted` (MSR-VTT-like: one clip per
video, textured backgrounds, smaller objects, noisy detuned audio, paraphrased captions with
words training never saw, and some videos without an audio track). With `edge_cases`, the
training corpus also holds a video shorter than one second and a corrupt file, so the feature
stages' failure handling runs on the default pipeline.

Randomness: one stream per (corpus, video), so a video does not change when others are added.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from stages.common import dataset
from stages.common.atomic import atomic_dir, write_json
from stages.common.cli import run_stage
from stages.common.errors import StageError
from stages.common.images import save_grid
from stages.common.media import write_media
from stages.common.progress import progress
from stages.common.seeding import rng

log = logging.getLogger(__name__)

CORPORA = ("train", "eval_close", "eval_shifted")


class Obj(NamedTuple):
    name: str
    paraphrases: tuple[str, ...]  # nouns the shifted captions use instead
    colour: str
    rgb: tuple[int, int, int]
    shape: str
    pitch: float  # Hz
    partials: tuple[tuple[float, float], ...]  # (frequency ratio, amplitude): the timbre


class Action(NamedTuple):
    name: str
    phrases: tuple[str, ...]  # verb phrases of training captions
    paraphrases: tuple[str, ...]  # verb phrases of shifted captions
    rate: float  # Hz: bounces, pulses, laps or swells per second


OBJECTS = (
    Obj("ball", ("sphere", "orb"), "red", (220, 40, 40), "circle", 262.0, ((1, 1.0), (2, 0.3))),
    Obj(
        "box",
        ("cube", "crate"),
        "blue",
        (40, 70, 220),
        "square",
        196.0,
        ((1, 1.0), (3, 0.33), (5, 0.2), (7, 0.14)),
    ),
    Obj(
        "cross",
        ("plus",),
        "green",
        (40, 170, 60),
        "cross",
        330.0,
        ((1, 1.0), (2, 0.5), (3, 0.5), (4, 0.5)),
    ),
    Obj(
        "ring",
        ("hoop", "loop"),
        "yellow",
        (230, 200, 30),
        "ring",
        392.0,
        ((1, 1.0), (2.76, 0.6), (5.4, 0.4)),
    ),
    Obj(
        "triangle",
        ("wedge",),
        "purple",
        (150, 50, 190),
        "triangle",
        523.0,
        ((1, 1.0), (3, 0.11), (5, 0.04)),
    ),
    Obj(
        "diamond",
        ("gem", "rhombus"),
        "cyan",
        (30, 190, 200),
        "diamond",
        147.0,
        ((1, 1.0), (2, 0.5), (3, 0.33), (4, 0.25), (5, 0.2)),
    ),
)
ACTIONS = (
    Action("bounce", ("bounces", "is bouncing up and down"), ("hops", "jumps about"), 1.5),
    Action("slide", ("slides", "is sliding sideways"), ("glides", "drifts across"), 0.25),
    Action("shake", ("shakes", "is shaking quickly"), ("trembles", "wobbles"), 6.0),
    Action("circle", ("circles", "is moving in a circle"), ("orbits", "loops around"), 0.5),
    Action("grow", ("grows", "is growing and shrinking"), ("swells", "expands"), 0.75),
)
TRAIN_TEMPLATES = (
    "the {colour} {object} {verb}",
    "now the {object} {verb}",
    "okay so the {colour} {object} {verb}",
    "watch how the {colour} {object} {verb}",
)
CLOSE_TEMPLATES = ("here the {colour} {object} {verb}", "so now the {object} {verb}")
SHIFTED_TEMPLATES = (
    "a {colour} {object} {verb}",
    "{object} {verb}",
    "look, {colour} {object} {verb}",
)
SHIFTED_COLOURS = {
    "red": "crimson",
    "blue": "navy",
    "green": "lime",
    "yellow": "golden",
    "purple": "violet",
    "cyan": "teal",
}


@dataclass(frozen=True)
class CorpusSize:
    videos: int
    clips_per_video: int
    no_audio: int  # videos written without an audio stream (MSR-VTT lacks audio for some)


@dataclass(frozen=True)
class Params:
    seed: int
    train: CorpusSize
    eval_close: CorpusSize
    eval_shifted: CorpusSize
    width: int
    height: int
    fps: int
    sample_rate: int  # written stereo at this rate; the audio stage resamples to 16 kHz
    min_clip_seconds: float
    max_clip_seconds: float
    edge_cases: bool  # add a 0.6 s video and a corrupt file to `train`
    out: Path
    metrics: Path
    stats: Path
    preview: Path


class Clip(NamedTuple):
    start: float
    end: float
    obj: int
    action: int
    caption: str


class VideoPlan(NamedTuple):
    video: str
    duration: float
    clips: list[Clip]
    has_audio: bool


# --- pure functions: the plan, the pictures, the sound -------------------------------------------


def caption(stream: np.random.Generator, obj: Obj, action: Action, corpus: str) -> str:
    if corpus == "eval_shifted":
        template = SHIFTED_TEMPLATES[stream.integers(len(SHIFTED_TEMPLATES))]
        # each word is paraphrased half the time: some captions keep training words, some none
        nouns = obj.paraphrases if stream.random() < 0.5 else (obj.name,)
        verbs = action.paraphrases if stream.random() < 0.5 else action.phrases
        noun = nouns[stream.integers(len(nouns))]
        verb = verbs[stream.integers(len(verbs))]
        colour = SHIFTED_COLOURS[obj.colour] if stream.random() < 0.5 else obj.colour
        return template.format(colour=colour, object=noun, verb=verb)
    templates = TRAIN_TEMPLATES if corpus == "train" else CLOSE_TEMPLATES
    template = templates[stream.integers(len(templates))]
    verb = action.phrases[stream.integers(len(action.phrases))]
    return template.format(colour=obj.colour, object=obj.name, verb=verb)


def plan_video(seed: int, corpus: str, index: int, size: CorpusSize, p: Params) -> VideoPlan:
    """Clips (start, end, object, action, caption) of one video, from its own random stream."""
    stream = rng(seed, "mcn_sample", corpus, index)
    t = float(np.round(stream.uniform(0.0, 0.5), 1))
    clips = []
    for _ in range(size.clips_per_video):
        length = float(np.round(stream.uniform(p.min_clip_seconds, p.max_clip_seconds), 1))
        o, a = int(stream.integers(len(OBJECTS))), int(stream.integers(len(ACTIONS)))
        clips.append(Clip(t, t + length, o, a, caption(stream, OBJECTS[o], ACTIONS[a], corpus)))
        t = float(np.round(t + length + stream.uniform(0.2, 1.0), 1))
    has_audio = index >= size.no_audio
    return VideoPlan(f"{corpus}_{index:05d}", t, clips, has_audio)


def trajectory(action: Action, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Object centre (x, y) in [0, 1] and scale over clip-relative times `t` (s)."""
    half = np.full_like(t, 0.5)
    scale = np.ones_like(t)
    if action.name == "bounce":
        return half, 0.8 - 0.55 * np.abs(np.sin(np.pi * action.rate * t)), scale
    if action.name == "slide":
        phase = (action.rate * t) % 1.0
        return 0.2 + 0.6 * (1 - np.abs(2 * phase - 1)), half, scale
    if action.name == "shake":
        return 0.5 + 0.08 * np.sin(2 * np.pi * action.rate * t), half, scale
    if action.name == "circle":
        angle = 2 * np.pi * action.rate * t
        return 0.5 + 0.25 * np.cos(angle), 0.5 + 0.25 * np.sin(angle), scale
    return half, half, 1.0 + 0.45 * np.sin(2 * np.pi * action.rate * t)


def shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Boolean mask of `shape` of radius `r` px, at offsets (dx, dy) from its centre."""
    if shape == "circle":
        return dx**2 + dy**2 <= r**2
    if shape == "square":
        return (np.abs(dx) <= 0.85 * r) & (np.abs(dy) <= 0.85 * r)
    if shape == "cross":
        arm = 0.32 * r
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))
    if shape == "ring":
        d2 = dx**2 + dy**2
        return (d2 <= r**2) & (d2 >= (0.55 * r) ** 2)
    if shape == "triangle":
        return (dy <= 0.8 * r) & (dy >= -r + 2 * np.abs(dx))
    return np.abs(dx) + np.abs(dy) <= 1.1 * r  # diamond


def background(stream: np.random.Generator, width: int, height: int, shifted: bool) -> np.ndarray:
    """A per-video backdrop: a light vertical gradient, or dark texture for the shifted corpus."""
    y = np.linspace(0.0, 1.0, height)[:, None, None]
    if shifted:
        base = stream.uniform(20, 70, 3)
        texture = stream.normal(0.0, 18.0, (height, width, 1))
        return np.clip(base + 30 * y + texture, 0, 255)
    base = stream.uniform(170, 230, 3)
    return np.broadcast_to(base - 40 * y, (height, width, 3)).copy()


def render_frames(
    plan: VideoPlan, p: Params, shifted: bool, stream: np.random.Generator
) -> np.ndarray:
    """(n_frames, h, w, 3) uint8 frames of a planned video; gaps show the bare background."""
    n = max(1, round(plan.duration * p.fps))
    back = background(stream, p.width, p.height, shifted)
    frames = np.broadcast_to(back, (n, p.height, p.width, 3)).astype(np.uint8)
    ys, xs = np.mgrid[0 : p.height, 0 : p.width].astype(np.float64)
    radius = (0.11 if shifted else 0.15) * min(p.width, p.height)
    tint = stream.uniform(-25, 25, 3) if shifted else np.zeros(3)
    times = np.arange(n) / p.fps
    for clip in plan.clips:
        obj, action = OBJECTS[clip.obj], ACTIONS[clip.action]
        inside = np.flatnonzero((times >= clip.start) & (times < clip.end))
        cx, cy, scale = trajectory(action, times[inside] - clip.start)
        colour = np.clip(np.array(obj.rgb) + tint, 0, 255).astype(np.uint8)
        for f, x, y, s in zip(inside, cx, cy, scale, strict=True):
            mask = shape_mask(obj.shape, xs - x * p.width, ys - y * p.height, radius * s)
            frames[f][mask] = colour
    return frames


def envelope(action: Action, t: np.ndarray) -> np.ndarray:
    """The action's rhythm as an amplitude envelope over clip-relative times `t` (s)."""
    if action.name == "bounce":  # a decaying knock at each impact (the bottom of the bounce)
        since = (t * action.rate) % 1.0 / action.rate
        return np.exp(-12.0 * since)
    if action.name == "slide":  # steady tone, a slow tremolo
        return 0.6 + 0.1 * np.sin(2 * np.pi * 3.0 * t)
    if action.name == "shake":  # short rapid pulses
        return ((t * action.rate) % 1.0 < 0.35).astype(np.float64)
    if action.name == "circle":  # one smooth swell per lap
        return 0.5 - 0.5 * np.cos(2 * np.pi * action.rate * t)
    return 0.5 + 0.45 * np.sin(2 * np.pi * action.rate * t)  # grow: loudness follows size


def synthesize_audio(
    plan: VideoPlan, p: Params, shifted: bool, stream: np.random.Generator
) -> np.ndarray:
    """(2, n_samples) float32 stereo: each clip's timbre x rhythm, panned with the object's x."""
    n = round(plan.duration * p.sample_rate)
    t = np.arange(n) / p.sample_rate
    mono = np.zeros(n)
    pan = np.full(n, 0.5)
    for clip in plan.clips:
        obj, action = OBJECTS[clip.obj], ACTIONS[clip.action]
        inside = (t >= clip.start) & (t < clip.end)
        local = t[inside] - clip.start
        pitch = obj.pitch * (2.0 ** (stream.uniform(-1, 1) / 12) if shifted else 1.0)
        tone = sum(a * np.sin(2 * np.pi * pitch * r * local) for r, a in obj.partials)
        tone /= sum(a for _, a in obj.partials)
        fade = np.clip(np.minimum(local, clip.end - clip.start - local) / 0.02, 0, 1)
        mono[inside] = 0.5 * tone * envelope(action, local) * fade
        pan[inside] = trajectory(action, local)[0]
    mono += stream.normal(0.0, 0.05 if shifted else 0.002, n)
    stereo = np.stack([mono * np.sqrt(1 - pan), mono * np.sqrt(pan)])
    return np.clip(stereo, -1, 1).astype(np.float32)


CLIPS_SCHEMA = dataset.SampleSchema(
    name="mcn_sample/clips/v1",
    doc="One row per narrated clip: the caption of [start, end] seconds of a video.",
    columns=(
        dataset.Column("video", pa.string(), "video id; the file is <videos dir>/<video>.mp4"),
        dataset.Column("start", pa.float64(), "clip start, seconds"),
        dataset.Column("end", pa.float64(), "clip end, seconds"),
        dataset.Column("caption", pa.string(), "the narration of the clip"),
        dataset.Column("object", pa.string(), "ground truth: the object shown and heard"),
        dataset.Column("action", pa.string(), "ground truth: the action performed"),
    ),
)
VIDEOS_SCHEMA = dataset.SampleSchema(
    name="mcn_sample/videos/v1",
    doc="One row per video file of a corpus.",
    columns=(
        dataset.Column("video", pa.string(), "video id"),
        dataset.Column("duration", pa.float64(), "seconds"),
        dataset.Column("has_audio", pa.bool_(), "whether the file has an audio stream"),
        dataset.Column("kind", pa.string(), "normal, short (< 1 s) or corrupt (edge cases)"),
    ),
)


def validate(p: Params) -> None:
    for name in CORPORA:
        size: CorpusSize = getattr(p, name)
        where = f"params.yaml: mcn_sample.{name}"
        if not (1 <= size.videos <= 100_000 and 1 <= size.clips_per_video <= 100):
            raise StageError(where, "videos must be 1 to 100000, clips_per_video 1 to 100")
        if not 0 <= size.no_audio <= size.videos:
            raise StageError(f"{where}.no_audio", f"must be in [0, {size.videos}]")
    if not 0 < p.min_clip_seconds <= p.max_clip_seconds <= 600:
        raise StageError("params.yaml: mcn_sample.min_clip_seconds", "need 0 < min <= max <= 600")
    ranges = {  # a stand-in's sizes: beyond these a value is a typo (1e9 asked for TiB arrays)
        "width": (p.width, 16, 4096),
        "height": (p.height, 16, 4096),
        "fps": (p.fps, 1, 120),
        "sample_rate": (p.sample_rate, 8000, 192_000),
    }
    for key, (value, low, high) in ranges.items():
        if not low <= value <= high:
            raise StageError(f"params.yaml: mcn_sample.{key}", f"must be {low} to {high}")


def edge_case_plans() -> list[tuple[VideoPlan, str]]:
    short = VideoPlan("train_short", 0.6, [Clip(0.0, 0.6, 0, 0, "the red ball bounces")], True)
    corrupt = VideoPlan("train_corrupt", 3.0, [Clip(0.0, 3.0, 1, 1, "the blue box slides")], True)
    return [(short, "short"), (corrupt, "corrupt")]


def build_corpus(p: Params, corpus: str, root: Path) -> dict:
    size: CorpusSize = getattr(p, corpus)
    shifted = corpus == "eval_shifted"
    plans = [(plan_video(p.seed, corpus, i, size, p), "normal") for i in range(size.videos)]
    if corpus == "train" and p.edge_cases:
        plans += edge_case_plans()
    videos_dir = root / "videos" / corpus
    videos_dir.mkdir(parents=True)
    for plan, kind in progress(plans, desc=f"mcn_sample {corpus}", unit="video"):
        stream = rng(p.seed, "mcn_sample-media", corpus, plan.video)
        frames = render_frames(plan, p, shifted, stream)
        audio = synthesize_audio(plan, p, shifted, stream) if plan.has_audio else None
        path = videos_dir / f"{plan.video}.mp4"
        write_media(path, frames, p.fps, audio, p.sample_rate, crf=20, preset="veryfast")
        if (
            kind == "corrupt"
        ):  # cut before the index (moov atom): unreadable, like a broken download
            path.write_bytes(path.read_bytes()[:2048])
    clips = [(plan.video, c) for plan, _ in plans for c in plan.clips]
    for table in ("clips", "videos_table"):
        (root / table / corpus).mkdir(parents=True)
    with dataset.ShardWriter(root / "clips" / corpus, CLIPS_SCHEMA, shard_rows=100_000) as w:
        w.write(
            {
                "video": [v for v, _ in clips],
                "start": [c.start for _, c in clips],
                "end": [c.end for _, c in clips],
                "caption": [c.caption for _, c in clips],
                "object": [OBJECTS[c.obj].name for _, c in clips],
                "action": [ACTIONS[c.action].name for _, c in clips],
            }
        )
    with dataset.ShardWriter(
        root / "videos_table" / corpus, VIDEOS_SCHEMA, shard_rows=100_000
    ) as w:
        w.write(
            {
                "video": [plan.video for plan, _ in plans],
                "duration": [plan.duration for plan, _ in plans],
                "has_audio": [plan.has_audio for plan, _ in plans],
                "kind": [kind for _, kind in plans],
            }
        )
    pairs = np.zeros((len(OBJECTS), len(ACTIONS)), np.int64)
    for _, c in clips:
        pairs[c.obj, c.action] += 1
    return {
        "videos": len(plans),
        "clips": len(clips),
        "seconds": round(sum(plan.duration for plan, _ in plans), 1),
        "without_audio": sum(not plan.has_audio for plan, _ in plans),
        "edge_cases": [plan.video for plan, kind in plans if kind != "normal"],
        "object_action_counts": pairs.tolist(),
    }


def preview(p: Params, path: Path) -> None:
    """One row per corpus: frames of its first video, one per second."""
    rows = []
    for corpus in CORPORA:
        plan = plan_video(p.seed, corpus, 0, getattr(p, corpus), p)
        stream = rng(p.seed, "mcn_sample-media", corpus, plan.video)
        frames = render_frames(plan, p, corpus == "eval_shifted", stream)
        picks = np.linspace(0, len(frames) - 1, 8).round().astype(int)
        rows.append(frames[picks])
    save_grid(path, np.stack(rows))


def build(params: Params) -> dict:
    """Write the corpus to `params.out`, the preview, metrics and stats; returns the metrics."""
    validate(params)
    stats = {}
    with atomic_dir(params.out) as tmp:
        for corpus in CORPORA:
            stats[corpus] = build_corpus(params, corpus, tmp)
    # metrics: the counts that define the data; the rest describes it
    metrics = {c: {k: stats[c].pop(k) for k in ("videos", "clips")} for c in CORPORA}
    stats["objects"] = [o.name for o in OBJECTS]
    stats["actions"] = [a.name for a in ACTIONS]
    preview(params, params.preview)
    write_json(params.metrics, metrics)
    write_json(params.stats, stats)
    return metrics


def main(params: Params) -> None:
    """Synthesise the narrated stand-in corpus (videos with audio, clip tables) for MCN."""
    metrics = build(params)
    log.info("videos, clips: %s", {c: tuple(m.values()) for c, m in metrics.items()})


if __name__ == "__main__":
    run_stage("mcn_sample", Params, main)
