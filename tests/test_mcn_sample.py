"""The narrated stand-in corpus: what is seen, heard and said agree, deterministically."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from stages.common import dataset
from stages.common.errors import StageError
from stages.common.seeding import rng
from stages.mcn.sample import (
    ACTIONS,
    OBJECTS,
    Clip,
    CorpusSize,
    Params,
    VideoPlan,
    build_corpus,
    plan_video,
    render_frames,
    synthesize_audio,
    validate,
)


def small(**changes) -> Params:
    base = dict(
        seed=7,
        train=CorpusSize(2, 2, no_audio=0),
        eval_close=CorpusSize(1, 1, no_audio=0),
        eval_shifted=CorpusSize(2, 1, no_audio=1),
        width=64,
        height=48,
        fps=10,
        sample_rate=16000,
        min_clip_seconds=2.0,
        max_clip_seconds=4.0,
        edge_cases=True,
        out=Path("unused"),  # build_corpus writes to the folder it is given
        metrics=Path("unused"),
        stats=Path("unused"),
        preview=Path("unused"),
    )
    return Params(**{**base, **changes})


def test_clips_are_ordered_inside_the_video_and_captions_name_object_and_action():
    p = small(train=CorpusSize(20, 3, 0))
    for i in range(20):
        plan = plan_video(p.seed, "train", i, p.train, p)
        ends = [0.0] + [c.end for c in plan.clips]
        for clip, previous_end in zip(plan.clips, ends, strict=False):
            assert previous_end <= clip.start < clip.end <= plan.duration
            assert p.min_clip_seconds <= round(clip.end - clip.start, 6) <= p.max_clip_seconds
            obj, action = OBJECTS[clip.obj], ACTIONS[clip.action]
            assert obj.name in clip.caption.split()
            assert any(phrase in clip.caption for phrase in action.phrases)


def test_shifted_captions_paraphrase():
    p = small(eval_shifted=CorpusSize(30, 1, 0))
    captions = [
        plan_video(p.seed, "eval_shifted", i, p.eval_shifted, p).clips[0].caption for i in range(30)
    ]
    paraphrases = {w for o in OBJECTS for w in o.paraphrases}
    assert any(set(c.split()) & paraphrases for c in captions)
    assert not any(c.startswith(("the ", "now ", "watch ")) for c in captions)


def one_clip(obj: int, action: int, seconds: float = 3.0) -> VideoPlan:
    return VideoPlan("v", seconds + 1.0, [Clip(0.5, 0.5 + seconds, obj, action, "x")], True)


@pytest.mark.parametrize("obj", range(len(OBJECTS)))
def test_the_sound_has_the_objects_pitch_and_silence_in_gaps(obj):
    p = small()
    audio = synthesize_audio(one_clip(obj, 1), p, False, rng(0, "t"))  # slide: steady tone
    mono = audio.sum(0)
    inside = mono[int(1.0 * p.sample_rate) : int(2.0 * p.sample_rate)]  # 1 s: 1 Hz bins
    assert np.argmax(np.abs(np.fft.rfft(inside))) == pytest.approx(OBJECTS[obj].pitch, abs=1.5)
    gap = mono[int(3.6 * p.sample_rate) :]
    assert np.abs(gap).max() < 0.05 < np.abs(inside).max()


@pytest.mark.parametrize("action", range(len(ACTIONS)))
def test_the_rhythm_follows_the_action(action):
    p = small()
    audio = synthesize_audio(one_clip(0, action, 4.0), p, False, rng(0, "t")).sum(0)
    loudness = np.abs(audio[int(0.5 * p.sample_rate) : int(4.5 * p.sample_rate)])
    envelope = loudness.reshape(-1, p.sample_rate // 100).mean(1)  # 100 Hz, 4 s: 0.25 Hz bins
    spectrum = np.abs(np.fft.rfft(envelope - envelope.mean()))
    peak = np.argmax(spectrum[1:]) + 1
    expected = {"bounce": 1.5, "slide": 3.0, "shake": 6.0, "circle": 0.5, "grow": 0.75}
    assert peak * 0.25 == pytest.approx(expected[ACTIONS[action].name], abs=0.26)


@pytest.mark.parametrize("action", range(len(ACTIONS)))
def test_the_object_is_visible_during_its_clip_only_and_moves_as_named(action):
    p = small()
    frames = render_frames(one_clip(2, action), p, False, rng(0, "v"))
    colour = np.array(OBJECTS[2].rgb)
    mask = np.abs(frames.astype(int) - colour).sum(-1) < 10
    times = np.arange(len(frames)) / p.fps
    inside = (times >= 0.5) & (times < 3.5)
    assert mask[inside].any(axis=(1, 2)).all() and not mask[~inside].any()
    x_centre = np.array([np.nonzero(m.any(0))[0].mean() for m in mask[inside]])
    y_centre = np.array([np.nonzero(m.any(1))[0].mean() for m in mask[inside]])
    area = mask[inside].sum((1, 2))
    name = ACTIONS[action].name
    moved = {"x": np.ptp(x_centre), "y": np.ptp(y_centre), "area": np.ptp(area) / area.mean()}
    if name == "bounce":
        assert moved["y"] > 10 and moved["x"] < 1
    elif name in ("slide", "shake"):
        assert moved["x"] > 3 and moved["y"] < 1
    elif name == "circle":
        assert moved["x"] > 10 and moved["y"] > 10
    else:
        assert moved["area"] > 0.5 and moved["x"] < 1


def corpus_digest(root) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_corpus_is_byte_identical_per_seed_and_tables_are_consistent(tmp_path, busy_cpu):
    p = small()
    build_corpus(p, "train", tmp_path / "a")
    stats = build_corpus(p, "train", tmp_path / "b")
    assert corpus_digest(tmp_path / "a") == corpus_digest(tmp_path / "b")
    assert stats["videos"] == 4 and stats["clips"] == 6  # 2 x 2 clips + short + corrupt
    clips = dataset.read_arrays(tmp_path / "a" / "clips" / "train")
    videos = dataset.read_arrays(tmp_path / "a" / "videos_table" / "train")
    assert set(clips["video"]) == set(videos["video"])
    assert sorted(videos["kind"]) == ["corrupt", "normal", "normal", "short"]
    files = {f.stem for f in (tmp_path / "a" / "videos" / "train").iterdir()}
    assert files == set(videos["video"])
    other = build_corpus(small(seed=8), "train", tmp_path / "c")
    assert corpus_digest(tmp_path / "c") != corpus_digest(tmp_path / "a")
    assert other["videos"] == 4


def test_bad_sizes_fail_naming_the_key():
    with pytest.raises(StageError, match=r"eval_shifted\.no_audio"):
        validate(small(eval_shifted=CorpusSize(2, 1, no_audio=3)))
