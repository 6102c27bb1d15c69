"""Sprites and chiptune sounds of the synthetic platformer that `gameplay_sample` renders.

Sprites are drawn as character grids (one character per pixel, '.' transparent) and turned into
RGB + mask arrays once. Sounds are NES-style: pulse and triangle waves and noise, synthesised with
numpy at the recording's sample rate. Each event kind gets a sound that differs in pitch register,
contour and timbre from the others, so that it can be told apart from audio alone:

- mushroom: a rising square-wave arpeggio (major chords climbing, 0.54 s);
- flower: a fast high trill of thin 12.5 % pulses gliding upward (0.8 s);
- stomp: a short low thud, a falling sine sweep plus a noise burst (0.15 s);
- death: a slow falling jingle on the triangle and square channels (1.6 s).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

COLORS = {
    "R": (216, 40, 0),  # red
    "S": (252, 188, 116),  # skin
    "O": (32, 56, 236),  # overalls
    "K": (136, 76, 0),  # brown
    "W": (252, 252, 252),  # white
    "Y": (252, 216, 60),  # yellow
    "N": (252, 152, 56),  # orange
    "G": (0, 168, 0),  # green
    "T": (252, 224, 168),  # tan
    "X": (0, 0, 0),  # black
}
# Fire palette: white cap and shirt, red overalls.
FIRE = {**COLORS, "R": (252, 252, 252), "O": (216, 40, 0)}


class Sprite(NamedTuple):
    rgb: np.ndarray  # (h, w, 3) uint8
    mask: np.ndarray  # (h, w) bool: opaque pixels

    def flipped(self) -> Sprite:
        return Sprite(self.rgb[:, ::-1], self.mask[:, ::-1])

    def stretched(self, height: int) -> Sprite:
        rows = np.arange(height) * self.rgb.shape[0] // height
        return Sprite(self.rgb[rows], self.mask[rows])


def sprite(art: str, colors: dict = COLORS) -> Sprite:
    rows = art.strip().splitlines()
    if len({len(r) for r in rows}) != 1:
        raise ValueError("sprite rows must have equal length")
    rgb = np.zeros((len(rows), len(rows[0]), 3), np.uint8)
    mask = np.zeros(rgb.shape[:2], bool)
    for y, row in enumerate(rows):
        for x, ch in enumerate(row):
            if ch != ".":
                rgb[y, x], mask[y, x] = colors[ch], True
    return Sprite(rgb, mask)


PLAYER_TOP = """
...RRRRR....
..RRRRRRRRR.
..KKKSSXS...
.KSKSSSXSSS.
.KSKKSSSXSSS
.KKSSSSXXXX.
...SSSSSSS..
..RRORRR....
.RRRORRORRR.
RRRROOOORRRR
SSROYOOYORSS
SSSOOOOOOSSS
SSOOOOOOOOSS
"""
PLAYER_LEGS = (
    """
..OOO..OOO..
.KKK....KKK.
KKKK....KKKK
""",
    """
...OOOOOO...
...KKKKKK...
..KKKK.KKK..
""",
)
PLAYER_DEAD = """
...RRRRRR...
..RRRRRRRR..
..SKSSSSKS..
..SXSSSSXS..
S.SSSXXSSS.S
SS.SSSSSS.SS
SSRRROORRRSS
..RROOOORR..
..OOOOOOOO..
..OOOOOOOO..
..OOO..OOO..
..OOO..OOO..
.KKK....KKK.
KKKK....KKKK
"""
GOOMBA = """
......KKKK......
.....KKKKKK.....
....KKKKKKKK....
...KKKKKKKKKK...
..KXXKKKKKKXXK..
.KKKWXKKKKXWKKK.
.KKKWXXXXXXWKKK.
KKKKWWXKKXWWKKKK
KKKKKKKKKKKKKKKK
.KKKKTTTTTTKKKK.
.....TTTTTT.....
....TTTTTTTT....
..XXTTTTTTTTXX..
.XXXXXTTTTXXXXX.
.XXXXXX..XXXXXX.
..XXXXX..XXXXX..
"""
KOOPA = """
....TT..........
...TTTT.........
...TTXT.........
...TTTT.........
...TTT..........
....TTT.........
....TTT..GGGG...
.....TT.GGGWGG..
.....TTGGGGGWGG.
.....TTGGWGGGWG.
.....WGGGGWGGGGG
.....WGGGGGWGGWG
.....WGWGGGGWWGG
.....WGGWGGGGGGG
.....WWGGWGGGGG.
......WWWWWWWW..
......TT...TT...
......TTT..TTT..
"""
MUSHROOM = """
......RRRR......
....RRWWWWRR....
...RRWWWWWWRR...
..RRRWWWWWWRRR..
.RRRRRWWWWRRRRR.
.RWWRRRRRRRRWWR.
RWWWWRRRRRRWWWWR
RWWWWRRRRRRWWWWR
RWWWWRRRRRRWWWWR
RRWWRRRRRRRRWWRR
.RRRTTTTTTTTRRR.
...TTXTTTTXTT...
...TTXTTTTXTT...
...TTTTTTTTTT...
....TTTTTTTT....
.....TTTTTT.....
"""
FLOWER = """
....NNNNNNNN....
..NNYYYYYYYYNN..
.NNYYWWWWWWYYNN.
.NYYWWXWWXWWYYN.
.NNYYWWWWWWYYNN.
..NNYYYYYYYYNN..
....NNNNNNNN....
.......GG.......
.GGG...GG...GGG.
.GGGG..GG..GGGG.
..GGGG.GG.GGGG..
...GGGGGGGGGG...
....GGGGGGGG....
.......GG.......
.......GG.......
.......GG.......
"""
QUESTION = """
KNNNNNNNNNNNNNNK
NYYYYYYYYYYYYYYX
NYXYYYYYYYYYYXYX
NYYYYNNNNNYYYYYX
NYYYNNXXXNNYYYYX
NYYYNNXYYNNXYYYX
NYYYYXXYYNNXYYYX
NYYYYYYYNNXXYYYX
NYYYYYYNNXXYYYYX
NYYYYYYNNXYYYYYX
NYYYYYYYXXYYYYYX
NYYYYYYNNYYYYYYX
NYYYYYYNNXYYYYYX
NYXYYYYYXXYYYXYX
NYYYYYYYYYYYYYYX
XXXXXXXXXXXXXXXX
"""


def _used_block() -> Sprite:
    rgb = np.empty((16, 16, 3), np.uint8)
    rgb[:] = COLORS["K"]
    rgb[[0, -1], :] = rgb[:, [0, -1]] = COLORS["X"]
    for y, x in ((2, 2), (2, 13), (13, 2), (13, 13)):
        rgb[y, x] = COLORS["X"]
    return Sprite(rgb, np.ones((16, 16), bool))


class Sprites(NamedTuple):
    small: tuple[Sprite, Sprite]  # two walking frames
    big: tuple[Sprite, Sprite]
    fire: tuple[Sprite, Sprite]
    dead: Sprite
    goomba: Sprite
    goomba_flat: Sprite
    koopa: Sprite
    koopa_shell: Sprite
    mushroom: Sprite
    flower: Sprite
    flower_flash: Sprite  # the flower's alternate colours (it blinks)
    question: Sprite
    used: Sprite


def make_sprites() -> Sprites:
    def player(colors: dict, height: int) -> tuple[Sprite, Sprite]:
        frames = [sprite(PLAYER_TOP.strip() + "\n" + legs.strip(), colors) for legs in PLAYER_LEGS]
        return tuple(f.stretched(height) for f in frames)  # type: ignore[return-value]

    goomba, koopa = sprite(GOOMBA), sprite(KOOPA)
    flash_colors = {**COLORS, "N": COLORS["R"], "Y": COLORS["W"], "W": COLORS["Y"]}
    return Sprites(
        small=player(COLORS, 16),
        big=player(COLORS, 30),
        fire=player(FIRE, 30),
        dead=sprite(PLAYER_DEAD),
        goomba=goomba,
        goomba_flat=Sprite(goomba.rgb[::2], goomba.mask[::2]),
        koopa=koopa,
        koopa_shell=Sprite(koopa.rgb[6:16], koopa.mask[6:16]),
        mushroom=sprite(MUSHROOM),
        flower=sprite(FLOWER),
        flower_flash=sprite(FLOWER, flash_colors),
        question=sprite(QUESTION),
        used=_used_block(),
    )


def blit(canvas: np.ndarray, art: Sprite, x: int, y: int) -> None:
    """Draw `art` with its top-left corner at (x, y) of `canvas`, clipped at the edges."""
    h, w = art.mask.shape
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + w, canvas.shape[1]), min(y + h, canvas.shape[0])
    if x0 >= x1 or y0 >= y1:
        return
    mask = art.mask[y0 - y : y1 - y, x0 - x : x1 - x]
    canvas[y0:y1, x0:x1][mask] = art.rgb[y0 - y : y1 - y, x0 - x : x1 - x][mask]


# --- sound -------------------------------------------------------------------------------------


def midi_hz(note: float) -> float:
    return 440.0 * 2.0 ** ((note - 69) / 12)


def pulse(freq: np.ndarray | float, n: int, rate: int, duty: float = 0.5) -> np.ndarray:
    """Pulse wave in [-1, 1]; `freq` may vary per sample (phase is integrated)."""
    phase = np.cumsum(np.broadcast_to(np.asarray(freq, np.float64) / rate, (n,)))
    return np.where(phase % 1.0 < duty, 1.0, -1.0)


def triangle(freq: float, n: int, rate: int) -> np.ndarray:
    phase = np.arange(n) * freq / rate
    return 4.0 * np.abs(phase % 1.0 - 0.5) - 1.0


def envelope(n: int, rate: int, attack: float = 0.003, release: float = 0.01) -> np.ndarray:
    """Linear fade-in and fade-out so notes do not click."""
    env = np.ones(n)
    a, r = min(int(attack * rate), n // 2), min(int(release * rate), n // 2)
    if a:
        env[:a] = np.linspace(0.0, 1.0, a)
    if r:
        env[n - r :] = np.linspace(1.0, 0.0, r)
    return env


def notes(sequence: list[tuple[float, float]], rate: int, voice) -> np.ndarray:
    """Concatenate (midi note, seconds) notes, each rendered by `voice(freq, n)`."""
    parts = []
    for note, seconds in sequence:
        n = int(seconds * rate)
        parts.append(voice(midi_hz(note), n) * envelope(n, rate))
    return np.concatenate(parts)


def effect_mushroom(rate: int) -> np.ndarray:
    chords = [(60, 64, 67), (62, 66, 69), (64, 68, 71), (65, 69, 72)]
    seq = [(n + 12, 0.045) for chord in chords for n in chord]
    return 0.35 * notes(seq, rate, lambda f, n: pulse(f, n, rate, 0.5))


def effect_flower(rate: int) -> np.ndarray:
    n = int(0.8 * rate)
    t = np.arange(n) / rate
    glide = midi_hz(84) * 2.0 ** (t / 0.8)  # one octave up over the effect
    trill = np.where((t // 0.025) % 2 == 0, 1.0, 1.5)  # alternate with the fifth every 25 ms
    return 0.3 * pulse(glide * trill, n, rate, 0.125) * envelope(n, rate, release=0.05)


def effect_stomp(rate: int, noise: np.random.Generator) -> np.ndarray:
    n = int(0.15 * rate)
    t = np.arange(n) / rate
    sweep = np.sin(2 * np.pi * np.cumsum(320.0 * (60.0 / 320.0) ** (t / 0.15)) / rate)
    burst = noise.uniform(-1.0, 1.0, n)
    burst = np.convolve(burst, np.ones(24) / 24, mode="same")  # low-passed: a dull thud
    return 0.6 * (0.7 * sweep + 0.6 * burst) * np.exp(-t / 0.05)


def effect_death(rate: int) -> np.ndarray:
    seq = [(71, 0.12), (77, 0.24), (77, 0.12), (77, 0.16), (76, 0.16), (74, 0.16), (72, 0.2)]
    seq += [(64, 0.16), (60, 0.28)]
    high = notes(seq, rate, lambda f, n: pulse(f, n, rate, 0.5))
    low = notes([(n - 24, s) for n, s in seq], rate, lambda f, n: triangle(f, n, rate))
    return 0.25 * high + 0.3 * low


def music(seconds: float, rate: int, stream: np.random.Generator) -> np.ndarray:
    """Background loop, mono (1, n): a seeded pentatonic melody over a triangle bass line."""
    eighth = 0.2
    count = int(np.ceil(seconds / eighth))
    scale = np.array([67, 69, 72, 74, 76, 79, 81, 84])
    steps = stream.integers(-2, 3, count)
    melody_idx = np.clip(np.cumsum(steps) + 3, 0, len(scale) - 1)
    melody = notes(
        [(scale[i], eighth) for i in melody_idx], rate, lambda f, n: pulse(f, n, rate, 0.25)
    )
    roots = [48, 53, 55, 48]
    bass = notes(
        [(roots[(k // 8) % 4], eighth) for k in range(count)],
        rate,
        lambda f, n: triangle(f, n, rate),
    )
    n = int(seconds * rate)
    return (0.10 * melody[:n] + 0.15 * bass[:n])[None]
