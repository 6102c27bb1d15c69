"""Synthetic gameplay recordings: the embedded stand-in for the paper's Mario videos (seed 000).

A small side-scrolling platformer, rendered frame by frame at 60 fps and 256x240 (NES output):
sky, clouds, hills, ground tiles, pipes the player jumps over, brick ledges, "?" blocks, a player
that walks and jumps, walking enemies (goomba, koopa) and mushroom and flower items. The sound
track (48 kHz mono) is a chiptune loop plus a distinct effect at every event. Output: H.264 + AAC
MP4 files in the folder `out` and, inside it, the ground truth: the events table `events`
(recording, time, label) and the sprite masks `masks` (per recording a Parquet file, per frame 1
where a sprite covers a pixel, 0 where the level itself shows: what "background recovered" is
measured on). The paths are params; both must lie inside `out`, so DVC tracks one folder.

Every event kind has its own picture and its own sound (`../shared/specs/gameplay.md`):
- mushroom: an item climbs out of a floating "?" block, slides along the ground into the player,
  who flickers between small and big and stays big; rising arpeggio;
- flower: a blinking flower climbs out of a "?" block at the end of a brick ledge; the player jumps
  onto the ledge, takes it and flashes into the white-and-red fire palette; high gliding trill;
- stomp: a goomba or koopa walks in, the player jumps on it, it flattens (or hides in its shell)
  and the player bounces; low thud;
- death: the player walks into an enemy, the scrolling and the music stop, the player pops up and
  falls off the screen, then respawns small; falling jingle.

The event time is the instant of contact. Randomness (event order and times, enemy kinds, level
decor, melody) comes from named streams per recording, so a recording's bytes depend only on the
seed and its index; x264 runs single-threaded, so the same params give byte-identical files.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages.common import dataset
from stages.common.atomic import atomic_dir, write_json
from stages.common.cli import run_stage
from stages.common.errors import StageError
from stages.common.media import write_media
from stages.common.progress import progress
from stages.common.seeding import rng
from stages.common.workers import worker_count
from stages.gameplay import art, masks

log = logging.getLogger(__name__)

FPS = 60
WIDTH, HEIGHT = 256, 240
GROUND = 208  # y of the ground's top edge
SCREEN_X = 80  # the player is drawn this far from the left edge; the camera follows
SPEED = 1.5  # player walk, px per frame (90 px/s)
ENEMY_SPEED = 0.5  # px per frame
ITEM_SPEED = 0.75  # px per frame
LABELS = ("mushroom", "flower", "stomp", "death")

MARGIN = 3.0  # s kept free of events at both ends: any 2-4 s window around an event fits
SPACING = 3.7  # s between events: a death (1.8 s) plus the next item's approach (1.8 s)
RESPAWN = 108  # frames from a death to the respawn (1.8 s)
EMERGE = 108  # frames before contact at which an item starts to climb out of its block
BLOCK_Y = 144  # top of the floating "?" block of a mushroom
LEDGE_Y = 160  # top of the brick ledge of a flower


@dataclass(frozen=True)
class Params:
    seed: int
    out: Path  # folder of the recordings
    events: Path  # the events table, a file inside `out`
    masks: Path  # the sprite masks, one Parquet file per recording, a folder inside `out`
    metrics: Path
    stats: Path
    recordings: int
    length: float  # seconds per recording
    event_count: int  # over all recordings, the four kinds in equal shares
    audio_rate: int
    crf: int  # x264 quality (lower = better)
    workers: int  # 0 = one per core


@dataclass(frozen=True)
class Event:
    frame: int  # the frame of contact
    label: str
    enemy: str  # "goomba" or "koopa" (stomp and death)


# --- planning: which events happen when ----------------------------------------------------------


def plan(params: Params) -> list[list[Event]]:
    """Events of every recording, in time order; labels balanced over all recordings."""
    if params.recordings < 1 or params.event_count < 1:
        raise StageError("params.yaml: gameplay_sample", "recordings and event_count must be >= 1")
    per_recording = np.full(params.recordings, params.event_count // params.recordings)
    per_recording[: params.event_count % params.recordings] += 1
    usable = params.length - 2 * MARGIN
    slot = usable / max(per_recording.max(), 1)
    if slot < SPACING:
        need = 2 * MARGIN + SPACING * per_recording.max()
        raise StageError(
            "params.yaml: gameplay_sample.length",
            f"{per_recording.max()} events per recording need length >= {need:.1f} s",
        )
    labels = np.resize(np.array(LABELS), params.event_count)
    labels = labels[rng(params.seed, "gameplay-labels").permutation(params.event_count)]
    out, taken = [], 0
    for r, count in enumerate(per_recording):
        stream = rng(params.seed, "gameplay-events", r)
        jitter = stream.uniform(-1, 1, count) * (slot - SPACING) / 2
        times = MARGIN + (np.arange(count) + 0.5) * slot + jitter
        enemies = stream.choice(["goomba", "koopa"], count)
        out.append(
            [
                Event(round(t * FPS), str(labels[taken + k]), str(enemies[k]))
                for k, t in enumerate(times)
            ]
        )
        taken += count
    return out


# --- the player's motion -------------------------------------------------------------------------


def arc(height: np.ndarray, f0: int, f1: int, h0: float, h1: float, apex: float) -> None:
    """Write a jump into `height`: from h0 at frame f0 up to `apex`, down to h1 at frame f1.

    Two half parabolas with one gravity, so the rise and fall take times that fit their drops.
    """
    rise, fall = np.sqrt(apex - h0), np.sqrt(apex - h1)
    top = f0 + (f1 - f0) * rise / (rise + fall)
    f = np.arange(max(f0, 0), min(f1, len(height)))
    up = f < top
    height[f[up]] = apex - (apex - h0) * ((f[up] - top) / (top - f0)) ** 2
    height[f[~up]] = apex - (apex - h1) * ((f[~up] - top) / (f1 - top)) ** 2


@dataclass(frozen=True)
class Motion:
    x: np.ndarray  # world x of the player's left edge per frame
    height: np.ndarray  # feet above the ground per frame, px
    jumps: np.ndarray  # frames at the top of filler jumps (a pipe stands there)


def simulate(events: list[Event], frames: int, stream: np.random.Generator) -> Motion:
    """The player's path: walk right, stop while dead, jump where the scripts and pipes say."""
    walking = np.ones(frames)
    for ev in events:
        if ev.label == "death":
            walking[ev.frame : ev.frame + RESPAWN] = 0
    x = SCREEN_X + SPEED * np.concatenate([[0.0], np.cumsum(walking)[:-1]])
    height = np.zeros(frames)
    busy = np.zeros(frames, bool)  # frames an event's script owns
    for ev in events:
        e = ev.frame
        busy[max(e - EMERGE - 12, 0) : e + (RESPAWN + 40 if ev.label == "death" else 50)] = True
        if ev.label == "stomp":
            arc(height, e - 27, e, 0, 16, 44)
            arc(height, e, e + 24, 16, 0, 30)
        elif ev.label == "flower":
            arc(height, e - 36, e - 9, 0, 48, 64)
            height[e - 9 : e + 16] = 48
            arc(height, e + 16, e + 31, 48, 0, 48)
        elif ev.label == "death":
            arc(height, e + 21, e + 90, 0, -260, 56)
    # Filler jumps over pipes wherever a 0.7 s jump fits between scripts, with probability 1/2.
    jumps = []
    f = 60
    while f < frames - 60:
        if not busy[f - 25 : f + 25].any() and stream.random() < 0.5:
            arc(height, f - 21, f + 21, 0, 0, 64)
            jumps.append(f)
            f += 120
        else:
            f += 30
    return Motion(x, height, np.array(jumps, int))


# --- the level (static background) ---------------------------------------------------------------


def _tile(kind: str) -> np.ndarray:
    base, light, dark = (200, 76, 12), (252, 188, 176), (0, 0, 0)
    tile = np.empty((16, 16, 3), np.uint8)
    tile[:] = base
    if kind == "ground":
        tile[0, :], tile[:, 0] = light, light
        tile[15, :], tile[:, 15], tile[7, 9:] = dark, dark, dark
    else:  # bricks: offset rows of mortar
        tile[[0, 8], :] = dark
        tile[1:8, 0], tile[9:16, 8] = dark, dark
    return tile


def _ellipse(image: np.ndarray, cx: int, cy: int, rx: int, ry: int, color) -> None:
    """Fill an axis-aligned ellipse (clipped to the image), touching only its bounding box."""
    y0, y1 = max(cy - ry, 0), min(cy + ry + 1, image.shape[0])
    x0, x1 = max(cx - rx, 0), min(cx + rx + 1, image.shape[1])
    if x0 >= x1 or y0 >= y1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1]
    image[y0:y1, x0:x1][((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1] = color


def build_level(width: int, motion: Motion, events: list[Event], stream) -> np.ndarray:
    """The whole level as one image (240, width, 3): sky, decor, ground, pipes, ledges."""
    level = np.empty((HEIGHT, width, 3), np.uint8)
    level[:] = (92, 148, 252)
    for cx in np.arange(40, width, 190) + stream.integers(0, 120, len(range(40, width, 190))):
        _ellipse(level, int(cx), int(stream.integers(30, 90)), 26, 10, (252, 252, 252))
    for cx in np.arange(0, width, 300) + stream.integers(0, 200, len(range(0, width, 300))):
        r = int(stream.integers(30, 60))
        _ellipse(level, int(cx), GROUND, int(1.6 * r), r, (120, 200, 120))
    ground = np.tile(_tile("ground"), (2, width // 16 + 1, 1))[:, :width]
    level[GROUND:] = ground
    for f in motion.jumps:
        cx = int(motion.x[f]) + 6
        level[184:GROUND, cx - 14 : cx + 14] = (0, 168, 0)
        level[184:GROUND, cx - 10 : cx - 6] = (128, 208, 16)
        level[176:184, cx - 16 : cx + 16] = (0, 168, 0)
        level[176:184, cx - 12 : cx - 8] = (128, 208, 16)
        level[176:GROUND, [cx - 16, cx + 15]] = (0, 0, 0)
    bricks = _tile("bricks")
    for ev in events:
        if ev.label == "flower":
            x0 = int(motion.x[ev.frame]) - 40
            for tx in range(x0, x0 + 48, 16):
                level[LEDGE_Y : LEDGE_Y + 16, tx : tx + 16] = bricks
    return level


# --- rendering --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scene:
    events: list[Event]
    motion: Motion
    level: np.ndarray
    sprites: art.Sprites


def player_look(scene: Scene, f: int) -> art.Sprite | None:
    """The player's sprite at frame f: state after past events, flashes right after them."""
    sp, big, fire = scene.sprites, False, False
    last: Event | None = None
    for ev in scene.events:
        if ev.frame > f:
            break
        last = ev
        if ev.label == "mushroom":
            big = True
        elif ev.label == "flower":
            big = fire = True
        elif ev.label == "death":
            big = fire = False
    height = scene.motion.height[f]
    step = 1 if height > 0 else int(scene.motion.x[f] // 8) % 2
    if last is not None:
        tau = f - last.frame
        if last.label == "death" and tau < RESPAWN:
            return sp.dead if height > -40 else None
        if last.label == "death" and tau < RESPAWN + 30 and (tau // 4) % 2:
            return None  # blinking in after the respawn
        if last.label == "mushroom" and tau < 36 and (tau // 4) % 2:
            return sp.small[step]
        if last.label == "flower" and tau < 48:
            return (sp.big, sp.fire)[(tau // 3) % 2][step]
    return (sp.fire if fire else sp.big if big else sp.small)[step]


def camera(scene: Scene, f: int) -> int:
    """The level's x shown at the screen's left edge in frame f: the camera follows the player."""
    return int(scene.motion.x[f]) - SCREEN_X


def background(scene: Scene, f: int) -> np.ndarray:
    """The level layer alone as frame f shows it (a view into the level; do not write)."""
    cam = camera(scene, f)
    return scene.level[:, cam : cam + WIDTH]


def render_frame(scene: Scene, f: int) -> np.ndarray:
    motion, sp = scene.motion, scene.sprites
    cam = camera(scene, f)
    img = background(scene, f).copy()

    def draw(sprite: art.Sprite, world_x: float, y: float) -> None:
        art.blit(img, sprite, int(np.floor(world_x)) - cam, round(y))

    for ev in scene.events:
        tau, xe = f - ev.frame, motion.x[ev.frame]
        block = sp.question if tau < -EMERGE else sp.used
        if ev.label == "mushroom":
            xb = xe + 12 + ITEM_SPEED * 84
            if -EMERGE <= tau < -84:  # climbing out (drawn before the block, so behind it)
                draw(sp.mushroom, xb, BLOCK_Y - 16 * (tau + EMERGE) / 24)
            elif -84 <= tau < 0:
                y = BLOCK_Y - 16
                if tau >= -63:
                    y += 64 * min((tau + 63) / 18, 1.0) ** 2
                draw(sp.mushroom, xe + 12 - ITEM_SPEED * tau, y)
            draw(block, xb, BLOCK_Y)
        elif ev.label == "flower":
            flower = sp.flower_flash if (f // 8) % 2 else sp.flower
            if -EMERGE <= tau < -84:
                draw(flower, xe + 8, LEDGE_Y - 16 * (tau + EMERGE) / 24)
            elif -84 <= tau < 0:
                draw(flower, xe + 8, LEDGE_Y - 16)
            draw(block, xe + 8, LEDGE_Y)
        elif -96 <= tau < 0 or (ev.label == "death" and 0 <= tau < RESPAWN):
            walk = sp.goomba if ev.enemy == "goomba" else sp.koopa
            if ev.enemy == "goomba" and (f // 10) % 2:
                walk = walk.flipped()
            offset = 12 if ev.label == "death" else -2
            draw(walk, xe + offset - ENEMY_SPEED * tau, GROUND - walk.mask.shape[0])
        elif ev.label == "stomp" and 0 <= tau < 30:
            flat = sp.goomba_flat if ev.enemy == "goomba" else sp.koopa_shell
            draw(flat, xe - 2, GROUND - flat.mask.shape[0])
    look = player_look(scene, f)
    if look is not None:
        draw(look, motion.x[f], GROUND - motion.height[f] - look.mask.shape[0])
    return img


def soundtrack(events: list[Event], seconds: float, rate: int, seed: int, index: int):
    """Mono (1, n) float32: the music loop (silent while the player is dead) plus effects."""
    audio = art.music(seconds, rate, rng(seed, "gameplay-music", index))
    n = audio.shape[1]
    fade = int(0.01 * rate)
    noise = rng(seed, "gameplay-noise", index)
    effects = {
        "mushroom": art.effect_mushroom(rate),
        "flower": art.effect_flower(rate),
        "death": art.effect_death(rate),
    }
    for ev in events:
        at = round(ev.frame / FPS * rate)
        if ev.label == "death":
            end = min(at + round(RESPAWN / FPS * rate), n)
            gain = np.ones(end - at)
            gain[:fade] = np.linspace(1, 0, fade)
            gain[fade : len(gain) - fade] = 0
            gain[len(gain) - fade :] = np.linspace(0, 1, fade)
            audio[:, at:end] *= gain
        sound = art.effect_stomp(rate, noise) if ev.label == "stomp" else effects[ev.label]
        sound = sound[: n - at]
        audio[:, at : at + len(sound)] += sound
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


# --- sprite masks: which pixels are not the level (the stand-in's ground truth) -----------------

MASK_ROWS = 240  # frames per row group of a mask file (4 s at 60 fps; ~15 MB before zstd)


def sprite_mask(frame: np.ndarray, scene: Scene, f: int) -> np.ndarray:
    """(H, W) uint8: 1 where frame f differs from the bare level, i.e. where a sprite is drawn."""
    return (frame != background(scene, f)).any(-1).astype(np.uint8)


class MaskWriter:
    """Collects each rendered frame's sprite mask and writes them as row groups of MASK_ROWS."""

    def __init__(self, path: Path, scene: Scene) -> None:
        self.shard = dataset.ShardFile(path, masks.schema(HEIGHT, WIDTH, FPS))
        self.scene = scene
        self.rows: list[np.ndarray] = []
        self.written = 0

    def frames(self, count: int) -> Iterator[np.ndarray]:
        """Render the frames, keeping each one's mask on the way to the encoder."""
        for f in range(count):
            frame = render_frame(self.scene, f)
            self.rows.append(sprite_mask(frame, self.scene, f))
            if len(self.rows) == MASK_ROWS:
                self._flush()
            yield frame

    def _flush(self) -> None:
        if self.rows:
            first = self.written
            self.written += len(self.rows)
            frames = np.arange(first, self.written, dtype=np.int32)
            self.shard.write({"frame": frames, "sprites": np.stack(self.rows)})
            self.rows.clear()

    def close(self) -> int:
        self._flush()
        return self.shard.close()


@dataclass(frozen=True)
class RecordingJob:
    index: int
    events: list[Event]
    path: Path
    mask: Path
    params: Params


def recording_name(index: int) -> str:
    return f"rec-{index:03d}.mp4"


def make_recording(job: RecordingJob) -> int:
    """Render and encode one recording and write its sprite masks; returns the bytes written."""
    p = job.params
    frames = round(p.length * FPS)
    motion = simulate(job.events, frames, rng(p.seed, "gameplay-jumps", job.index))
    width = int(motion.x[-1]) - SCREEN_X + WIDTH + 32
    level = build_level(width, motion, job.events, rng(p.seed, "gameplay-level", job.index))
    scene = Scene(job.events, motion, level, art.make_sprites())
    audio = soundtrack(job.events, p.length, p.audio_rate, p.seed, job.index)
    mask_writer = MaskWriter(job.mask, scene)
    write_media(job.path, mask_writer.frames(frames), FPS, audio, p.audio_rate, crf=p.crf)
    return job.path.stat().st_size + mask_writer.close()


def events_csv(plan_: list[list[Event]]) -> str:
    """The ground-truth table: recording, time (s, the frame of contact), label."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["recording", "time", "label"])
    for r, events in enumerate(plan_):
        for ev in events:
            writer.writerow([recording_name(r), f"{ev.frame / FPS:.6f}", ev.label])
    return buffer.getvalue()


def inside_out(params: Params, key: str) -> Path:
    """A path of `key` relative to `out`: DVC tracks the folder, so the table and the masks must
    be in it."""
    path = getattr(params, key)
    if not path.is_relative_to(params.out) or path == params.out:
        raise StageError(
            f"params.yaml: gameplay_sample.{key}", f"must lie inside out ({params.out})"
        )
    return path.relative_to(params.out)


def build(params: Params) -> dict:
    """Write the recordings and the events table to `params.out` (atomically); return stats."""
    if params.audio_rate < 8000 or params.crf < 0:
        raise StageError("params.yaml: gameplay_sample", "audio_rate must be >= 8000, crf >= 0")
    events_file, mask_folder = inside_out(params, "events"), inside_out(params, "masks")
    schedule = plan(params)
    workers = worker_count(params.workers, params.recordings, "gameplay_sample.workers")
    with atomic_dir(params.out) as tmp:
        (tmp / mask_folder).mkdir(parents=True)
        jobs = [
            RecordingJob(
                r,
                events,
                tmp / recording_name(r),
                masks.mask_path(tmp / mask_folder, recording_name(r)),
                params,
            )
            for r, events in enumerate(schedule)
        ]
        with ProcessPoolExecutor(workers) as pool:
            results = pool.map(make_recording, jobs)
            sizes = list(progress(results, desc="recordings", total=len(jobs), unit="rec"))
        (tmp / events_file).parent.mkdir(parents=True, exist_ok=True)
        (tmp / events_file).write_text(events_csv(schedule))
    labels = [ev.label for events in schedule for ev in events]
    return {
        "recordings": params.recordings,
        "recording_seconds": params.recordings * params.length,
        "events": len(labels),
        "events_per_label": {k: labels.count(k) for k in LABELS},
        "fps": FPS,
        "frame_size": [WIDTH, HEIGHT],
        "audio_rate": params.audio_rate,
        "bytes": int(sum(sizes)),
        "device": "cpu",
    }


METRICS = ("recordings", "recording_seconds", "events")  # the rest of build's stats is a record


def main(params: Params) -> dict:
    """Render synthetic gameplay recordings (MP4, H.264 + AAC) and their events table."""
    stats = build(params)
    log.info("%d recordings, %d events", stats["recordings"], stats["events"])
    write_json(params.metrics, {k: stats[k] for k in METRICS})
    write_json(params.stats, {k: v for k, v in stats.items() if k not in METRICS})
    return {"workers": worker_count(params.workers, params.recordings, "gameplay_sample.workers")}


if __name__ == "__main__":
    run_stage("gameplay_sample", Params, main)
