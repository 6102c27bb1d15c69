"""The lip/speech stages end to end on a tiny corpus: outputs, determinism, bad-input errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from stages.common import dataset
from stages.common.errors import StageError
from stages.common.media import AudioReader, write_media
from stages.common.seeding import rng
from stages.lipspeech import lip_features, mel_cepstrum, talker
from stages.lipspeech import pairs as lipspeech_pairs
from stages.lipspeech import sample as lipspeech_sample
from stages.lipspeech.lip_transform import LipTransform

SAMPLE = lipspeech_sample.Params(seed=11, utterances=4, min_seconds=1.0, max_seconds=1.3, workers=1)
LIP = lip_features.Params(
    corpus=lip_features.Corpus(),
    roi=lip_features.Roi(),
    dct=lip_features.Dct(keep=40, selection="energy"),
    pca=lip_features.Pca(components=6),
    workers=1,
)
# Encoded as the corpus stage encodes its videos.
ENCODING = {
    "crf": 18,
    "preset": "ultrafast",
    "gop": lipspeech_sample.GOP,
    "audio_bitrate": lipspeech_sample.AUDIO_BITRATE,
}
MCEP = mel_cepstrum.Params(
    corpus=mel_cepstrum.Corpus(), analysis=mel_cepstrum.Analysis(), check_frames=30, workers=1
)


def digests(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run all four stages in a fresh directory; returns it."""
    root = tmp_path_factory.mktemp("lipspeech")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        lipspeech_sample.main(SAMPLE)
        lip_features.main(LIP)
        mel_cepstrum.main(MCEP)
        lipspeech_pairs.main(lipspeech_pairs.Params())
    return root


@pytest.mark.slow
def test_outputs_fit_together(built: Path):
    table = (built / "data/lipspeech/corpus/utterances.csv").read_text().splitlines()
    assert table[0] == ",".join(lipspeech_sample.COLUMNS) and len(table) == 5
    lip = dataset.read_arrays(built / "data/lipspeech/lip")
    mcep = dataset.read_arrays(built / "data/lipspeech/mcep")
    pairs = dataset.read_arrays(built / "data/lipspeech/pairs")
    assert lip["features"].shape[1] == 6 and mcep["mcep"].shape[1] == 32
    assert set(lip["split"]) == {"train", "test"}
    assert np.isfinite(mcep["mcep"]).all()
    for name in set(lip["utterance"]):
        duration = float(next(r.split(",")[3] for r in table[1:] if r.startswith(name)))
        frames = (mcep["utterance"] == name).sum()
        assert abs(frames - (1 + duration * 200)) <= 3  # 5 ms frames over the whole utterance
        assert abs((lip["utterance"] == name).sum() - duration * 30000 / 1001) <= 1.5
    # Interpolation rule: a pair's lip vector lies between its two neighbouring video frames.
    row = len(pairs["time"]) // 2
    name, t = pairs["utterance"][row], pairs["time"][row]
    times, feats = lip["time"][lip["utterance"] == name], lip["features"][lip["utterance"] == name]
    k = np.searchsorted(times, t, side="right") - 1
    w = (t - times[k]) / (times[k + 1] - times[k])
    np.testing.assert_allclose(pairs["lip"][row], (1 - w) * feats[k] + w * feats[k + 1], atol=1e-5)
    metrics = json.loads((built / "reports/lipspeech/mcep.json").read_text())
    assert metrics["check_against_pysptk"]["mcd_db_max"] <= 0.05
    # The lips predict the speech: even a linear map beats ignoring them.
    baselines = json.loads((built / "reports/lipspeech/pairs.json").read_text())[
        "lip_to_mcep_baselines"
    ]
    assert baselines["test_mcd_db_linear"] < baselines["test_mcd_db_train_mean"] - 1.0
    transform = LipTransform.load(built / "data/lipspeech/lip_transform.npz")
    first = lip["utterance"] == lip["utterance"][0]
    assert transform.rebuild(lip["features"][first][:2], lip["utterance"][0]).shape == (2, 55, 55)
    for png in ("lip_preview.png", "mcep_preview.png"):
        assert (built / "reports/lipspeech" / png).stat().st_size > 1000


@pytest.mark.slow
def test_same_params_give_identical_bytes(
    built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)
    lipspeech_sample.main(SAMPLE)
    lip_features.main(LIP)
    mel_cepstrum.main(MCEP)
    for out in ("corpus", "lip", "mcep"):
        assert digests(tmp_path / "data/lipspeech" / out) == digests(built / "data/lipspeech" / out)
    same = (tmp_path / "data/lipspeech/lip_transform.npz").read_bytes()
    assert same == (built / "data/lipspeech/lip_transform.npz").read_bytes()


# --- bad input ------------------------------------------------------------------------------------


def talker_video(
    path: Path, seconds: float = 1.0, *, audio: str = "mono48", frames: int | None = None
) -> None:
    """A short talker recording; audio: mono48, stereo44, none."""
    generator = rng(1, "bad-input")
    utt = talker.random_utterance(generator, seconds, seconds)
    speech = talker.synthesize(utt, generator)
    video = talker.render_frames(utt, generator, 1.0, frames or int(utt.duration * 29.97))
    if audio == "none":
        write_media(path, video, talker.FPS, **ENCODING)
    elif audio == "stereo44":
        import soxr

        resampled = soxr.resample(speech, 48000, 44100).astype(np.float32)
        write_media(
            path, video, talker.FPS, np.stack([resampled, 0.5 * resampled]), 44100, **ENCODING
        )
    else:
        write_media(path, video, talker.FPS, speech[None], 48000, **ENCODING)


def corpus(root: Path, rows: list[tuple[str, str, float]]) -> Path:
    table = root / "data/lipspeech/corpus/utterances.csv"
    table.parent.mkdir(parents=True, exist_ok=True)
    lines = ["utterance,file,split,duration"] + [
        f"{n},{f},{s},{d}" for n, f, s, d in [(r[0], r[1], "train", r[2]) for r in rows]
    ]
    table.write_text("\n".join(lines) + "\n")
    return table


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("media")
    talker_video(root / "good.mp4")
    talker_video(root / "silent.mp4", audio="none")
    talker_video(root / "stereo44.mp4", audio="stereo44")
    return root


def test_recording_without_audio_is_named_and_nothing_is_written(media, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    corpus(tmp_path, [("a", str(media / "good.mp4"), 1.0), ("b", str(media / "silent.mp4"), 1.0)])
    old = tmp_path / "data/lipspeech/mcep/part-00000.parquet"
    old.parent.mkdir(parents=True)
    old.write_text("previous output")
    with pytest.raises(StageError, match=r"silent\.mp4.*no audio track"):
        mel_cepstrum.main(MCEP)
    assert old.read_text() == "previous output"  # the old output survives a failed run
    assert not (tmp_path / "reports").exists()


def test_roi_outside_the_frame_is_named(media, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    corpus(tmp_path, [("a", str(media / "good.mp4"), 1.0)])
    params = lip_features.Params(**{**LIP.__dict__, "roi": lip_features.Roi(x=700, y=10)})
    with pytest.raises(StageError, match=r"good\.mp4.*outside the 720x480 frame"):
        lip_features.main(params)
    assert not (tmp_path / "data/lipspeech/lip").exists()


def test_video_shorter_than_the_table_is_named(media, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    corpus(tmp_path, [("a", str(media / "good.mp4"), 1.0), ("b", str(media / "good.mp4"), 3.0)])
    with pytest.raises(StageError, match=r"good\.mp4.*table says 3\.000 s"):
        lip_features.main(LIP)
    assert not (tmp_path / "data/lipspeech/lip").exists()


def test_nan_audio_is_named():
    samples = np.zeros((4800, 1), np.float32)
    samples[2400, 0] = np.nan
    with pytest.raises(
        StageError, match=r"take\.mp4: audio has 1 NaN/inf samples \(first at 0\.050 s\)"
    ):
        mel_cepstrum.speech_at(samples, 48000, 12000, Path("take.mp4"))


def test_table_errors_name_line_and_field(media, tmp_path):
    table = corpus(tmp_path, [("a", str(media / "good.mp4"), 1.0)])
    table.write_text(table.read_text() + f"b,{media / 'good.mp4'},dev,1.0\n")
    with pytest.raises(StageError, match="line 3: split"):
        mel_cepstrum.corpus.read_table(table)


def test_stereo_44k_input_gives_the_same_frames_as_mono_48k(media):
    entry = mel_cepstrum.corpus.Entry("s", media / "stereo44.mp4", "train", 1.0)
    stereo = mel_cepstrum.process((entry, MCEP.analysis))
    mono = mel_cepstrum.process(
        (mel_cepstrum.corpus.Entry("m", media / "good.mp4", "train", 1.0), MCEP.analysis)
    )
    assert (stereo.input_rate, stereo.channels, mono.input_rate, mono.channels) == (
        44100,
        2,
        48000,
        1,
    )
    # AAC pads its last 1024-sample block: up to ~23 ms (5 frames) more at 44.1 kHz.
    assert abs(len(stereo.mcep) - len(mono.mcep)) <= 5
    n = min(len(stereo.mcep), len(mono.mcep))
    # Same speech through two different AAC encodes: on the loud frames the spectra agree to
    # within codec noise, and best with no time shift (the 44.1 kHz input is not misaligned).
    from stages.lipspeech.mcd import mcd

    speech = np.flatnonzero(mono.mcep[: n - 3, 0] > mono.mcep[:n, 0].max() - 3)
    assert len(speech) > 40
    by_shift = [mcd(stereo.mcep[speech + s], mono.mcep[speech]) for s in (-3, 0, 3)]
    assert by_shift[1] < 2.0 and by_shift[1] < min(by_shift[0], by_shift[2])
    with AudioReader(media / "stereo44.mp4") as reader:
        assert reader.track().shape[0] == 2
