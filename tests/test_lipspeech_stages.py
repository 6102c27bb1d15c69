"""The lip/speech stages end to end on a tiny corpus: outputs, determinism, bad-input errors,
and the area pointed at a corpus elsewhere by a params file alone."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from stages.common import dataset
from stages.common.errors import StageError
from stages.common.media import AudioReader, write_media
from stages.common.params import load_section
from stages.common.seeding import rng
from stages.lipspeech import lip_features, mel_cepstrum, talker
from stages.lipspeech import pairs as lipspeech_pairs
from stages.lipspeech import sample as lipspeech_sample
from stages.lipspeech.corpus import Corpus
from stages.lipspeech.lip_transform import LipTransform

REPO = Path(__file__).resolve().parents[1]
# Encoded as the corpus stage encodes its videos.
ENCODING = {
    "crf": 18,
    "preset": "ultrafast",
    "gop": lipspeech_sample.GOP,
    "audio_bitrate": lipspeech_sample.AUDIO_BITRATE,
}
# The analysis of params.yaml; a smaller corpus, DCT and PCA than there.
ANALYSIS = load_section(mel_cepstrum.Params, "mel_cepstrum", REPO / "params.yaml").analysis


def corpus_at(folder: Path) -> Corpus:
    return Corpus(root=folder, table=folder / "utterances.csv")


def sample_params(out: Path) -> lipspeech_sample.Params:
    return lipspeech_sample.Params(
        seed=11,
        out=out / "corpus",
        table=out / "corpus/utterances.csv",
        metrics=out / "corpus.json",
        stats=out / "corpus.stats.json",
        utterances=4,
        min_seconds=1.0,
        max_seconds=1.3,
        test_fraction=0.2,
        jitter_px=1.5,
        channels=1,
        crf=18,
        workers=1,
    )


def lip_params(source: Corpus, out: Path) -> lip_features.Params:
    return lip_features.Params(
        corpus=source,
        out=out / "lip",
        transform=out / "lip_transform.npz",
        metrics=out / "lip_features.json",
        stats=out / "lip_features.stats.json",
        preview=out / "lip_preview.png",
        roi=lip_features.Roi(x=333, y=253, width=55, height=55),
        dct=lip_features.Dct(keep=40, selection="energy"),
        pca=lip_features.Pca(components=6, variance=None),
        mean_normalise=True,
        preview_frames=6,
        workers=1,
    )


def mcep_params(source: Corpus, out: Path) -> mel_cepstrum.Params:
    return mel_cepstrum.Params(
        corpus=source,
        out=out / "mcep",
        metrics=out / "mcep.json",
        stats=out / "mcep.stats.json",
        preview=out / "mcep_preview.png",
        analysis=ANALYSIS,
        check_frames=30,
        workers=1,
    )


def pairs_params(out: Path) -> lipspeech_pairs.Params:
    return lipspeech_pairs.Params(
        lip=out / "lip",
        mcep=out / "mcep",
        out=out / "pairs",
        metrics=out / "pairs.json",
        stats=out / "pairs.stats.json",
        alignment="interpolate",
    )


def digests(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def build(out: Path) -> None:
    """All four stages, every output under `out`."""
    sample = sample_params(out)
    lipspeech_sample.main(sample)
    lip_features.main(lip_params(corpus_at(sample.out), out))
    mel_cepstrum.main(mcep_params(corpus_at(sample.out), out))
    lipspeech_pairs.main(pairs_params(out))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run all four stages into a fresh directory; returns it."""
    root = tmp_path_factory.mktemp("lipspeech")
    build(root)
    return root


@pytest.mark.slow
def test_outputs_fit_together(built: Path):
    table = (built / "corpus/utterances.csv").read_text().splitlines()
    assert table[0] == ",".join(lipspeech_sample.COLUMNS) and len(table) == 5
    lip = dataset.read_arrays(built / "lip")
    mcep = dataset.read_arrays(built / "mcep")
    pairs = dataset.read_arrays(built / "pairs")
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
    metrics = json.loads((built / "mcep.json").read_text())
    assert metrics["check_against_pysptk"]["mcd_db_max"] <= 0.05
    # The lips predict the speech: even a linear map beats ignoring them.
    baselines = json.loads((built / "pairs.json").read_text())["lip_to_mcep_baselines"]
    assert baselines["test_mcd_db_linear"] < baselines["test_mcd_db_train_mean"] - 1.0
    transform = LipTransform.load(built / "lip_transform.npz")
    first = lip["utterance"] == lip["utterance"][0]
    assert transform.rebuild(lip["features"][first][:2], lip["utterance"][0]).shape == (2, 55, 55)
    for png in ("lip_preview.png", "mcep_preview.png"):
        assert (built / png).stat().st_size > 1000


@pytest.mark.slow
def test_metrics_are_a_few_numbers_and_timings_are_not_in_them(built: Path):
    def numbers(node) -> int:
        if isinstance(node, dict):
            return sum(numbers(v) for v in node.values())
        return isinstance(node, int | float) and not isinstance(node, bool)

    for name in ("corpus", "lip_features", "mcep", "pairs"):
        metrics = json.loads((built / f"{name}.json").read_text())
        assert 1 <= numbers(metrics) <= 8, name
        both = json.dumps(metrics) + (built / f"{name}.stats.json").read_text()
        for timing in ('"seconds"', '"decode_seconds"', '"frames_per_second"', '"workers"'):
            assert timing not in both, f"{name}: {timing} belongs in the run log"


@pytest.mark.slow
def test_same_params_give_identical_bytes(built: Path, tmp_path: Path, busy_cpu):
    build(tmp_path)
    for out in ("corpus", "lip", "mcep", "pairs"):
        assert digests(tmp_path / out) == digests(built / out)
    for name in ("lip_transform.npz", "lip_preview.png", "mcep_preview.png"):
        assert (tmp_path / name).read_bytes() == (built / name).read_bytes()
    for name in ("corpus", "lip_features", "mcep", "pairs"):
        for report in (f"{name}.json", f"{name}.stats.json"):
            assert (tmp_path / report).read_text() == (built / report).read_text().replace(
                str(built), str(tmp_path)
            )


def as_yaml(params) -> dict:
    """A Params dataclass as its params.yaml section (paths as strings)."""
    return json.loads(json.dumps(dataclasses.asdict(params), default=str))


@pytest.mark.slow
def test_a_corpus_elsewhere_is_a_params_change(built: Path, tmp_path: Path):
    """Real data: copy the corpus to another folder, point corpus.root/table at it in a params
    file, run the CLIs with --params: the same features, transform and pairs."""
    copy = tmp_path / "m2tinit"
    shutil.copytree(built / "corpus", copy)
    out = tmp_path / "out"
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "lip_features": as_yaml(lip_params(corpus_at(copy), out)),
                "mel_cepstrum": as_yaml(mcep_params(corpus_at(copy), out)),
                "lipspeech_pairs": as_yaml(pairs_params(out)),
            }
        )
    )
    env = {**os.environ, "STAGES_RUN_LOG": str(tmp_path / "logs")}
    for module in ("lip_features", "mel_cepstrum"):
        subprocess.run(
            [sys.executable, "-m", f"stages.lipspeech.{module}", "--params", str(params)],
            cwd=REPO,
            env=env,
            check=True,
        )
    lipspeech_pairs.main(load_section(lipspeech_pairs.Params, "lipspeech_pairs", params))
    for name in ("lip", "mcep", "pairs"):
        assert digests(out / name) == digests(built / name)
    for name in ("lip_transform.npz", "lip_preview.png", "mcep_preview.png"):
        assert (out / name).read_bytes() == (built / name).read_bytes()
    stats = json.loads((out / "mcep.stats.json").read_text())
    assert stats["corpus"]["table"] == str(copy / "utterances.csv")
    assert (tmp_path / "logs/mel_cepstrum.jsonl").is_file()  # timings went to the run log


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


def corpus(root: Path, rows: list[tuple[str, str, float]]) -> Corpus:
    """A corpus table in root/corpus naming `rows` (utterance, file, duration), all train."""
    source = corpus_at(root / "corpus")
    table = source.table
    table.parent.mkdir(parents=True, exist_ok=True)
    for _, file, _ in rows:  # the videos live inside the corpus folder, as DVC needs
        if Path(file).is_file() and not (table.parent / Path(file).name).exists():
            shutil.copy(file, table.parent / Path(file).name)
    lines = ["utterance,file,split,duration"] + [
        f"{n},{Path(f).name},train,{d}" for n, f, d in rows
    ]
    table.write_text("\n".join(lines) + "\n")
    return source


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("media")
    talker_video(root / "good.mp4")
    talker_video(root / "silent.mp4", audio="none")
    talker_video(root / "stereo44.mp4", audio="stereo44")
    return root


def test_recording_without_audio_is_named_and_nothing_is_written(media, tmp_path):
    source = corpus(
        tmp_path, [("a", str(media / "good.mp4"), 1.0), ("b", str(media / "silent.mp4"), 1.0)]
    )
    params = mcep_params(source, tmp_path / "out")
    old = params.out / "part-00000.parquet"
    old.parent.mkdir(parents=True)
    old.write_text("previous output")
    with pytest.raises(StageError, match=r"silent\.mp4.*no audio track"):
        mel_cepstrum.main(params)
    assert old.read_text() == "previous output"  # the old output survives a failed run
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["mcep"]


def test_roi_outside_the_frame_is_named(media, tmp_path):
    source = corpus(tmp_path, [("a", str(media / "good.mp4"), 1.0)])
    params = dataclasses.replace(
        lip_params(source, tmp_path / "out"),
        roi=lip_features.Roi(x=700, y=10, width=55, height=55),
    )
    with pytest.raises(StageError, match=r"good\.mp4.*outside the 720x480 frame"):
        lip_features.main(params)
    assert not (tmp_path / "out").exists()


def test_video_shorter_than_the_table_is_named(media, tmp_path):
    source = corpus(
        tmp_path, [("a", str(media / "good.mp4"), 1.0), ("b", str(media / "good.mp4"), 3.0)]
    )
    with pytest.raises(StageError, match=r"good\.mp4.*table says 3\.000 s"):
        lip_features.main(lip_params(source, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_table_outside_the_corpus_root_is_named(media, tmp_path):
    source = corpus(tmp_path, [("a", str(media / "good.mp4"), 1.0)])
    elsewhere = Corpus(root=tmp_path / "other", table=source.table)
    with pytest.raises(StageError, match=r"lies outside corpus\.root"):
        mel_cepstrum.main(mcep_params(elsewhere, tmp_path / "out"))


def test_nan_audio_is_named():
    samples = np.zeros((4800, 1), np.float32)
    samples[2400, 0] = np.nan
    with pytest.raises(
        StageError, match=r"take\.mp4: audio has 1 NaN/inf samples \(first at 0\.050 s\)"
    ):
        mel_cepstrum.speech_at(samples, 48000, 12000, Path("take.mp4"))


def test_table_errors_name_line_and_field(media, tmp_path):
    table = corpus(tmp_path, [("a", str(media / "good.mp4"), 1.0)]).table
    table.write_text(table.read_text() + f"b,{media / 'good.mp4'},dev,1.0\n")
    with pytest.raises(StageError, match="line 3: split"):
        mel_cepstrum.corpus.read_table(table)


def test_stereo_44k_input_gives_the_same_frames_as_mono_48k(media):
    entry = mel_cepstrum.corpus.Entry("s", media / "stereo44.mp4", "train", 1.0)
    stereo = mel_cepstrum.process((entry, ANALYSIS))
    mono = mel_cepstrum.process(
        (mel_cepstrum.corpus.Entry("m", media / "good.mp4", "train", 1.0), ANALYSIS)
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


@pytest.mark.parametrize(
    ("key", "value"),
    [("alpha", 1.5), ("alpha", -1.0), ("sample_rate", 0), ("hop", 0), ("order", 300)],
)
def test_analysis_settings_out_of_range_name_their_key(key, value):
    """Checked before any audio is decoded: alpha 1.5 was a ZeroDivisionError in a worker."""
    repo = load_section(mel_cepstrum.Params, "mel_cepstrum", REPO / "params.yaml").analysis
    mel_cepstrum.check_analysis(repo)  # the repository's settings pass
    bad = dataclasses.replace(repo, **{key: value})
    with pytest.raises(StageError, match=rf"mel_cepstrum\.analysis\.{key}: .*got {value}"):
        mel_cepstrum.check_analysis(bad)


def test_a_video_outside_the_corpus_root_is_named(media, tmp_path):
    """DVC tracks corpus.root: a file elsewhere could change without re-running anything."""
    source = corpus(tmp_path, [("a", str(media / "good.mp4"), 1.0)])
    source.table.write_text(source.table.read_text() + f"b,{media / 'good.mp4'},train,1.0\n")
    with pytest.raises(StageError, match=r"utterance b: .*good\.mp4 lies outside corpus\.root"):
        mel_cepstrum.main(mcep_params(source, tmp_path / "out"))
    assert not (tmp_path / "out").exists()
