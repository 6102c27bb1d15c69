"""The event-clip stage on real recordings (any fps, size, container), bad tables, broken files."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from media_samples import (
    frame_index,
    pattern_audio,
    pattern_frame,
    pyav_frames,
    truncate,
    write_audio_only,
    write_pattern,
)

from stages.common import dataset
from stages.common.errors import StageError
from stages.common.media import write_media
from stages.common.params import load_section
from stages.gameplay import clips as gc
from stages.gameplay import sample as gs

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = load_section(gc.Params, "gameplay_clips", ROOT / "params.yaml")
SOURCES = {"rec-a.mp4": 60, "rec-b.mkv": 25}  # fps of each good recording


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Two good recordings in different containers, rates and sizes, and three broken ones."""
    root = tmp_path_factory.mktemp("corpus")
    a = write_pattern(root / "rec-a.mp4", 12.0, 60, (256, 240), clicks=(3.0, 7.5))
    write_pattern(root / "rec-b.mkv", 10.0, 25, (320, 180), clicks=(5.0,))
    truncate(a, root / "cut.mp4")
    write_pattern(root / "silent.mp4", 6.0, 30, (64, 48), audio=False)
    write_audio_only(root / "sound-only.mp4", 6.0)
    frames = (pattern_frame(i, 48, 64) for i in range(180))  # 6 s of video, 3 s of sound
    write_media(root / "short-sound.mp4", frames, 30, pattern_audio(3.0, 48000, []), 48000)
    return root


def write_events(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def make_params(corpus: Path, events: Path, out: Path, **changes) -> gc.Params:
    """params.yaml's section with `changes`, reading `corpus` and `events`, writing `out`."""
    changes = {"workers": 1, "masks": None, **changes}  # this corpus has no sprite masks
    return replace(DEFAULTS, recordings=corpus, events=events, out=out, **changes)


GOOD_ROWS = [
    {"recording": "rec-a.mp4", "time": 3.0, "label": "mushroom"},
    {"recording": "rec-b.mkv", "start": 4.0, "end": 6.5, "label": "flower"},
    {"recording": "rec-a.mp4", "start": 6.2, "end": 9.9, "label": "death"},
    {"recording": "rec-b.mkv", "time": 2.0, "label": "stomp"},
]


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("built")
    events = write_events(tmp / "events.csv", GOOD_ROWS)
    outcome = gc.build(make_params(corpus, events, tmp / "clips", shard_rows=2))
    assert outcome.stats["shards"] == 2
    return outcome, dataset.read_arrays(tmp / "clips"), tmp / "clips"


def test_one_clip_per_row_with_its_label_sorted_by_recording_then_start(built):
    outcome, clips, _ = built
    assert clips["clip_id"].tolist() == [1, 3, 4, 2]
    assert clips["label"].tolist() == ["mushroom", "death", "stomp", "flower"]
    assert clips["label_index"].tolist() == [0, 3, 2, 1]
    assert clips["recording"].tolist() == ["rec-a.mp4", "rec-a.mp4", "rec-b.mkv", "rec-b.mkv"]
    np.testing.assert_allclose(clips["start"], [1.5, 6.2, 0.5, 4.0])
    np.testing.assert_allclose(clips["end"], [4.5, 9.9, 3.5, 6.5])
    assert outcome.stats["clips_per_label"] == {"mushroom": 1, "flower": 1, "stomp": 1, "death": 1}
    assert outcome.failures == []
    assert set(clips["split"]) <= {"train", "test"}


def test_held_out_clips_are_a_seeded_share_of_each_label():
    """round(fraction * n) of each label's clips, chosen by the seed alone: the same for any
    order of the rows, other for another seed, and a label's split ignores other labels."""
    specs = [gc.ClipSpec(r, "rec.mp4", ("a", "b")[r % 2], 0.0, 3.0) for r in range(1, 21)]
    split = {c.row: c.split for c in gc.assign_splits(specs, 5, 0.25)}
    for label in "ab":
        held = [r for r, s in split.items() if s == "test" and specs[r - 1].label == label]
        assert len(held) == round(0.25 * 10)
    assert {c.row: c.split for c in gc.assign_splits(specs[::-1], 5, 0.25)} == split
    assert {c.row: c.split for c in gc.assign_splits(specs, 6, 0.25)} != split
    only_a = [c for c in specs if c.label == "a"]
    assert {c.row: c.split for c in gc.assign_splits(only_a, 5, 0.25)} == {
        r: s for r, s in split.items() if specs[r - 1].label == "a"
    }
    assert all(c.split == "train" for c in gc.assign_splits(specs, 5, 0.0))


def test_frame_and_sample_counts_follow_the_duration(built):
    _, clips, _ = built
    duration = clips["end"] - clips["start"]
    assert np.all(np.abs(clips["n_frames"] - duration * 30) <= 1)
    assert clips["n_frames"].tolist() == [90, 111, 90, 75]
    assert clips["frames"].shape == (4, 111, 128, 128, 3)  # padded to the longest clip
    assert np.all(np.abs(clips["n_samples"] - duration * 16000) <= 16000 / 30)
    assert clips["n_samples"].tolist() == [48000, 59200, 48000, 40000]
    assert clips["audio"].dtype == np.float32 and set(clips["audio_rate"]) == {16000}
    for k, n in enumerate(clips["n_frames"]):
        assert (
            not clips["frames"][k, n:].any()
            and not clips["audio"][k, clips["n_samples"][k] :].any()
        )


def test_frames_are_the_source_frames_on_screen_at_30_fps(built):
    _, clips, _ = built
    for k in range(4):
        fps = SOURCES[clips["recording"][k]]
        times = clips["start"][k] + np.arange(clips["n_frames"][k]) / 30
        shown = [frame_index(f) for f in clips["frames"][k, : clips["n_frames"][k]]]
        assert shown == np.floor(times * fps + 1e-6).astype(int).tolist()


def test_first_frame_matches_the_recordings_frame_at_the_window_start(built, corpus):
    _, clips, _ = built
    decoded = {name: pyav_frames(corpus / name, 128) for name in SOURCES}
    for k in range(4):
        name = clips["recording"][k]
        reference = decoded[name][int(clips["start"][k] * SOURCES[name] + 1e-6)]
        diff = np.abs(clips["frames"][k, 0].astype(int) - reference.astype(int)).mean()
        assert diff < 6, (name, diff)


def test_audio_is_the_same_span_clicks_included(built):
    _, clips, _ = built
    expected = {0: [3.0], 1: [7.5], 3: [5.0]}  # clip -> click times in its recording
    for k, clicks in expected.items():
        audio = clips["audio"][k, : clips["n_samples"][k]]
        loud = np.flatnonzero(np.abs(audio) > 0.6)
        onsets = loud[np.diff(loud, prepend=-1000) > 1000] / 16000 + clips["start"][k]
        assert onsets == pytest.approx(clicks, abs=0.002)
    assert np.abs(clips["audio"][2]).max() < 0.6  # no click in stomp's window


def test_same_input_gives_the_same_bytes_with_any_worker_count(built, corpus, tmp_path):
    _, _, first = built
    events = write_events(tmp_path / "events.csv", GOOD_ROWS)
    gc.build(make_params(corpus, events, tmp_path / "clips", workers=2, shard_rows=2))
    old, new = sorted(first.iterdir()), sorted((tmp_path / "clips").iterdir())
    assert [p.name for p in old] == [p.name for p in new]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(old, new, strict=True))


def test_parquet_events_table(corpus, tmp_path):
    events = tmp_path / "events.parquet"
    pd.DataFrame([GOOD_ROWS[1], GOOD_ROWS[2]]).to_parquet(events)
    outcome = gc.build(make_params(corpus, events, tmp_path / "clips"))
    assert outcome.stats["clips"] == 2 and outcome.stats["frames"] == 75 + 111


# --- bad input: reported with its row, before anything is written -----------------------------

BAD_ROWS = [
    ({"recording": "rec-z.mp4", "time": 3.0, "label": "stomp"}, "unknown recording 'rec-z.mp4'"),
    ({"recording": "rec-a.mp4", "time": 3.0, "label": "coin"}, "label 'coin' is not in"),
    ({"recording": "rec-a.mp4", "start": 5.0, "end": 5.0, "label": "stomp"}, "start 5 >= end 5"),
    ({"recording": "rec-a.mp4", "start": 1.0, "end": 6.0, "label": "stomp"}, "outside the allowed"),
    ({"recording": "rec-a.mp4", "time": 11.5, "label": "stomp"}, "outside recording 'rec-a.mp4'"),
    ({"recording": "rec-a.mp4", "time": 0.5, "label": "stomp"}, r"window -1\.000-2\.000 s"),
    ({"recording": "rec-a.mp4", "label": "stomp"}, "needs a time, or a start and an end"),
    ({"recording": "rec-a.mp4", "time": "abc", "label": "stomp"}, "time 'abc' is not a finite"),
    ({"recording": "rec-a.mp4", "time": "nan", "label": "stomp"}, "time 'nan' is not a finite"),
    ({"recording": "rec-a.mp4", "time": "inf", "label": "stomp"}, "time 'inf' is not a finite"),
    ({"recording": "rec-a.mp4", "start": 1, "end": "-inf", "label": "stomp"}, "end '-inf' is"),
    (
        {"recording": "short-sound.mp4", "time": 4.0, "label": "stomp"},
        r"\(0-3\.0\d\d s: its audio ends at 3\.0\d\d s, its video at 6\.000 s\)",
    ),
]


@pytest.mark.parametrize(("row", "problem"), BAD_ROWS)
def test_bad_row_is_reported_with_its_number(corpus, tmp_path, row, problem):
    events = write_events(tmp_path / "events.csv", [GOOD_ROWS[0], row])
    with pytest.raises(StageError, match=problem) as info:
        gc.build(make_params(corpus, events, tmp_path / "clips"))
    assert info.value.where == f"{events}: line 3"  # the header is line 1
    assert not (tmp_path / "clips").exists()


def test_recordings_outside_the_folder_are_refused(corpus, tmp_path):
    """DVC tracks the recordings folder only: a file elsewhere would never re-run the stage."""
    shutil.copy(corpus / "rec-a.mp4", corpus.parent / "outside.mp4")
    for name in ("../outside.mp4", str(corpus / "rec-a.mp4"), "sub/../../outside.mp4"):
        rows = [GOOD_ROWS[0], {"recording": name, "time": 3.0, "label": "stomp"}]
        events = write_events(tmp_path / "events.csv", rows)
        with pytest.raises(StageError) as info:
            gc.build(make_params(corpus, events, tmp_path / "clips"))
        assert info.value.where == f"{events}: line 3"
        assert info.value.problem == (
            f"recording {name!r} is outside the recordings folder {corpus} (DVC does not track "
            "it): name a file inside it"
        )
    assert not (tmp_path / "clips").exists()


def test_lines_are_the_files_own_blank_lines_and_quoted_newlines_included(corpus, tmp_path):
    events = tmp_path / "events.csv"
    events.write_text('recording,time,label\n\nrec-a.mp4,3.0,"mush\nroom"\n\nrec-a.mp4,3.0,coin\n')
    with pytest.raises(StageError, match=r"label 'mush\\nroom'.* line 6: label 'coin'") as info:
        gc.build(make_params(corpus, events, tmp_path / "clips"))
    assert info.value.where == f"{events}: line 3"


def test_parquet_rows_are_numbered_from_1(corpus, tmp_path):
    events = tmp_path / "events.parquet"
    pd.DataFrame([GOOD_ROWS[1], {**GOOD_ROWS[2], "end": float("inf")}]).to_parquet(events)
    with pytest.raises(StageError, match="end inf is not a finite number") as info:
        gc.build(make_params(corpus, events, tmp_path / "clips"))
    assert info.value.where == f"{events}: row 2"


def test_ragged_csv_line_is_named(corpus, tmp_path):
    events = tmp_path / "events.csv"
    events.write_text("recording,time,label\nrec-a.mp4,3.0,stomp\nrec-a.mp4,3.0,stomp,x\n")
    with pytest.raises(StageError) as info:
        gc.build(make_params(corpus, events, tmp_path / "clips"))
    assert info.value.problem == "4 fields, the header has 3"
    assert info.value.where == f"{events}: line 3"


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_events_table_without_rows_is_an_error(corpus, tmp_path, suffix):
    events = tmp_path / f"events.{suffix}"
    table = pd.DataFrame({"recording": [], "time": [], "label": []})
    table.to_csv(events, index=False) if suffix == "csv" else table.to_parquet(events)
    with pytest.raises(StageError) as info:
        gc.build(make_params(corpus, events, tmp_path / "clips", on_bad_recording="skip"))
    assert info.value.problem == "events table has no rows (only a header)"
    assert info.value.where == str(events)
    assert not (tmp_path / "clips").exists()


def test_all_bad_rows_are_listed(corpus, tmp_path):
    rows = [GOOD_ROWS[0]] + [row for row, _ in BAD_ROWS[:3]]
    events = write_events(tmp_path / "events.csv", rows)
    with pytest.raises(StageError, match=r"and 2 more bad rows: line 4: .*; line 5: start") as info:
        gc.build(make_params(corpus, events, tmp_path / "clips"))
    assert info.value.where.endswith("line 3")


def test_missing_column_is_named(corpus, tmp_path):
    events = write_events(tmp_path / "events.csv", [{"recording": "rec-a.mp4", "time": 3.0}])
    with pytest.raises(StageError, match="missing column 'label'"):
        gc.build(make_params(corpus, events, tmp_path / "clips"))
    assert not (tmp_path / "clips").exists()


# --- broken recordings -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("cut.mp4", "cannot be decoded"),
        ("silent.mp4", "no audio track"),
        ("sound-only.mp4", "no video stream"),
    ],
)
@pytest.mark.parametrize("workers", [1, 2])  # 2: the error comes back from a worker process
def test_broken_recording_stops_the_stage_naming_the_file(corpus, tmp_path, name, problem, workers):
    rows = [GOOD_ROWS[0], {"recording": name, "time": 2.0, "label": "death"}]
    events = write_events(tmp_path / "events.csv", rows)
    with pytest.raises(StageError, match=problem) as info:
        gc.build(make_params(corpus, events, tmp_path / "clips", workers=workers))
    assert info.value.where == str(corpus / name)
    assert not (tmp_path / "clips").exists()


@pytest.mark.parametrize("workers", [1, 2])
def test_skip_mode_lists_broken_recordings_and_goes_on(corpus, tmp_path, workers):
    rows = [
        {"recording": "cut.mp4", "time": 2.0, "label": "death"},
        GOOD_ROWS[0],
        {"recording": "silent.mp4", "time": 3.0, "label": "stomp"},
    ]
    events = write_events(tmp_path / "events.csv", rows)
    params = make_params(
        corpus,
        events,
        tmp_path / "clips",
        on_bad_recording="skip",
        min_success_share=0.3,
        workers=workers,
    )
    outcome = gc.build(params)
    assert [f["row"] for f in outcome.failures] == [1, 3]
    assert "cannot be decoded" in outcome.failures[0]["error"]
    assert "no audio track" in outcome.failures[1]["error"]
    assert outcome.stats["failures"] == 2 and outcome.stats["clips"] == 1
    assert dataset.read_arrays(tmp_path / "clips", columns=["clip_id"])["clip_id"].tolist() == [2]


SKIP_ROWS = [
    {"recording": "cut.mp4", "time": 2.0, "label": "death"},
    GOOD_ROWS[0],
    {"recording": "silent.mp4", "time": 3.0, "label": "stomp"},
]


@pytest.mark.parametrize(
    ("rows", "share"),
    [(SKIP_ROWS, 0.5), (SKIP_ROWS[:1] + SKIP_ROWS[2:], 0.01)],  # 1 of 3 cut; none of 2
)
def test_skip_mode_fails_below_the_success_share_and_replaces_nothing(
    corpus, tmp_path, rows, share
):
    events = write_events(tmp_path / "events.csv", rows)
    out = tmp_path / "clips"
    out.mkdir()
    (out / "part-00000.parquet").write_text("the previous dataset")
    params = make_params(corpus, events, out, on_bad_recording="skip", min_success_share=share)
    with pytest.raises(StageError) as info:
        gc.build(params)
    assert info.value.where == str(corpus)
    assert info.value.problem.startswith(
        f"2 of {len(rows)} clips failed, from 2 broken recordings (cut.mp4, silent.mp4); "
        f"gameplay_clips.min_success_share is {share:g}. First failure: {corpus / 'cut.mp4'}: "
        "cannot be decoded ("
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clips", "events.csv"]
    assert [p.name for p in out.iterdir()] == ["part-00000.parquet"]
    assert (out / "part-00000.parquet").read_text() == "the previous dataset"


def test_a_failure_while_cutting_counts_against_the_share(corpus, tmp_path, monkeypatch):
    """Recordings that probe fine but fail to decode later are counted too (skip mode)."""
    events = write_events(tmp_path / "events.csv", GOOD_ROWS)

    def broken(path, *args):
        raise gc.StageError(path, "cannot be decoded (test)")

    monkeypatch.setattr(gc, "FrameReader", broken)
    params = make_params(corpus, events, tmp_path / "clips", on_bad_recording="skip")
    with pytest.raises(StageError, match="4 of 4 clips failed, from 2 broken recordings") as info:
        gc.build(params)
    assert info.value.where == str(corpus)
    assert not (tmp_path / "clips").exists()


@pytest.mark.parametrize("share", [0, -0.5, 1.5])
def test_success_share_must_be_a_share(corpus, tmp_path, share):
    events = write_events(tmp_path / "events.csv", GOOD_ROWS)
    with pytest.raises(StageError) as info:
        gc.build(make_params(corpus, events, tmp_path / "clips", min_success_share=share))
    assert info.value.problem == "must be in (0, 1]"
    assert info.value.where == "params.yaml: gameplay_clips.min_success_share"


# --- the command line --------------------------------------------------------------------------


def run_cli(cwd: Path, params: Path | None = None, **section) -> subprocess.CompletedProcess:
    """The stage as DVC runs it, in `cwd`; params.yaml's section with `section`'s keys replaced
    (outputs keep their relative paths, so they land under `cwd`)."""
    if params is None:
        params = cwd / "params.yaml"
        full = yaml.safe_load((ROOT / "params.yaml").read_text())
        # this corpus has no sprite masks (a section may name its own)
        own = full["gameplay_clips"] | {"masks": None} | section
        sections = {"base": full["base"], "gameplay_clips": own}
        params.write_text(yaml.safe_dump(sections))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STAGES_RUN_LOG": str(cwd / "logs")}
    return subprocess.run(
        [sys.executable, "-m", "stages.gameplay.clips", "--params", str(params)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )


@pytest.mark.slow
def test_cli_writes_dataset_and_reports(corpus, tmp_path):
    events = write_events(tmp_path / "events.csv", GOOD_ROWS)
    done = run_cli(tmp_path, recordings=str(corpus), events=str(events), workers=1)
    assert done.returncode == 0, done.stderr
    assert dataset.count_rows(tmp_path / DEFAULTS.out) == 4
    reports = (tmp_path / DEFAULTS.metrics).parent
    assert sorted(p.name for p in reports.iterdir()) == [
        "clips.json",
        "clips.stats.json",
        "contact_sheet.png",
        "failures.csv",
    ]
    metrics = json.loads((tmp_path / DEFAULTS.metrics).read_text())
    assert metrics == {
        "audio_seconds": 12.2,
        "clips": 4,
        "failures": 0,
        "frames": 366,
        "recording_seconds": 22.0,
        "recordings": 2,
    }
    stats = json.loads((tmp_path / DEFAULTS.stats).read_text())
    assert stats["clips_per_label"] == {"mushroom": 1, "flower": 1, "stomp": 1, "death": 1}
    assert stats["clips_per_split"] == {"train": 4, "test": 0}  # round(0.25 * 1) per label
    with open(tmp_path / DEFAULTS.failures) as handle:
        assert list(csv.reader(handle)) == [["row", "recording", "label", "start", "end", "error"]]
    (log,) = (tmp_path / "logs").iterdir()  # timings go to the run log, not the reports
    assert {"seconds", "recording_seconds_per_second", "workers"} <= set(
        json.loads(log.read_text())
    )


def test_cli_reports_a_bad_row_in_one_line(corpus, tmp_path):
    rows = [GOOD_ROWS[0], {"recording": "rec-a.mp4", "time": 3.0, "label": "coin"}]
    events = write_events(tmp_path / "events.csv", rows)
    done = run_cli(tmp_path, recordings=str(corpus), events=str(events))
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith(
            f"gameplay_clips: error: {events}: line 3: label 'coin' is not in the vocabulary"
        )
    )
    assert not (tmp_path / DEFAULTS.out).exists()


def test_cli_skip_mode_with_every_recording_broken_fails_in_one_line(corpus, tmp_path):
    rows = [{"recording": "silent.mp4", "time": 3.0, "label": "stomp"}]
    events = write_events(tmp_path / "events.csv", rows)
    metrics = tmp_path / DEFAULTS.metrics
    metrics.parent.mkdir(parents=True)
    metrics.write_text("previous metrics")
    done = run_cli(tmp_path, recordings=str(corpus), events=str(events), on_bad_recording="skip")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"gameplay_clips: error: {corpus}: 1 of 1 clips failed, from 1 broken recordings "
        "(silent.mp4); gameplay_clips.min_success_share is 0.5. First failure: "
        f"{corpus / 'silent.mp4'}: no audio track"
    )
    assert not (tmp_path / DEFAULTS.out).exists()
    assert [p.name for p in metrics.parent.iterdir()] == [metrics.name]
    assert metrics.read_text() == "previous metrics"


OUTPUTS = ("out", "failures", "contact_sheet", "metrics", "stats")


@pytest.mark.slow
def test_real_data_is_a_params_change_here_a_copy_of_the_stand_in(tmp_path):
    """docs/gameplay.md's switch to real recordings, with a copy of the stand-in as the corpus:
    a params file whose input keys name the copy gives the same bytes as the original."""
    sample = load_section(gs.Params, "gameplay_sample", ROOT / "params.yaml")
    original = tmp_path / "sample"
    small = dict(recordings=1, length=14.0, event_count=2, workers=1)
    gs.build(replace(sample, out=original, events=original / "events.csv", masks=original / "masks",
                     **small))  # fmt: skip
    shutil.copytree(original, tmp_path / "raw/gameplay")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    section = params["gameplay_clips"] | {"workers": 1}
    built = {}
    for run, recordings in {"original": original, "copy": "raw/gameplay"}.items():  # docs: relative
        outputs = {key: f"{run}/{getattr(DEFAULTS, key)}" for key in OUTPUTS}
        inputs = {"recordings": str(recordings), "events": f"{recordings}/events.csv",
                  "masks": f"{recordings}/masks"}  # fmt: skip
        params["gameplay_clips"] = section | outputs | inputs
        (tmp_path / f"{run}.yaml").write_text(yaml.safe_dump(params))
        done = run_cli(tmp_path, tmp_path / f"{run}.yaml")
        assert done.returncode == 0, done.stderr
        built[run] = {key: tmp_path / path for key, path in outputs.items()}
    a, b = built["original"], built["copy"]
    assert dataset.count_rows(a["out"]) == 2
    sprites = dataset.read_arrays(a["out"], ["sprites"])["sprites"]  # the masks came along
    assert sprites.shape[2:] == (128, 128) and set(np.unique(sprites)) == {0, 1}
    assert 0.001 < sprites.mean() < 0.1  # a few sprites over a mostly bare level
    shards = sorted(p.name for p in a["out"].iterdir())
    assert shards == sorted(p.name for p in b["out"].iterdir())
    for name in shards:
        assert (a["out"] / name).read_bytes() == (b["out"] / name).read_bytes(), name
    for key in ("failures", "contact_sheet", "metrics"):
        assert a[key].read_bytes() == b[key].read_bytes(), key
    stats_a, stats_b = (json.loads(x["stats"].read_text()) for x in (a, b))
    events_a, events_b = stats_a.pop("events"), stats_b.pop("events")
    assert events_b == {"path": "raw/gameplay/events.csv", "sha256": events_a["sha256"]}
    assert stats_a == stats_b
