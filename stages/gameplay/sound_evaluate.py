"""Stage `av_mtrnn_evaluate`: sound from pictures, the paper's future work measured (seed 000).

    python -m stages.gameplay.sound_evaluate [--params FILE]

For every clip of both splits, the audio-visual MTRNN (`av_mtrnn_train`) recognises the clip from
its pictures alone: the weights frozen, Cs(0) fitted to the picture channels of the IO layer while
the sound channels run closed loop (their real values are never shown). Its sound is then read two
ways, each generated closed loop on the sound channels:

- `pictures_shown`: the clip's pictures keep coming in (teacher-forced) and the network voices
  them: sound for a silent video;
- `closed_loop`: from the first picture on the network runs entirely on its own outputs, pictures
  and sound, as the paper generated its sequences.

Measured against the clip's real sound:

- log-mel distance: RMS difference in dB over bands and steps (beside it, the training clips' mean
  spectrum held still: the distance a network that learnt no sound would reach);
- the event kind: a logistic-regression classifier trained on the real sounds of the training
  clips (each band's mean and maximum over the clip) names the kind of every generated sound; its
  accuracy on the real held-out sounds and chance are the baselines.

One held-out clip per event kind is written as WAV (Griffin-Lim from the log-mel spectrum, the real
one resynthesised the same way beside the generated one) with a picture of both spectra.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.io import wavfile
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from stages.common import training
from stages.common.atomic import atomic_dir, write_json
from stages.common.cli import run_stage
from stages.common.errors import StageError
from stages.common.images import save_grid
from stages.gameplay import sound
from stages.gameplay.mtrnn import MTRNN, Config, recognise
from stages.gameplay.mtrnn_train import SoundParams, feature_sequences, load_cae, sound_sequences

log = logging.getLogger(__name__)
STAGE = "av_mtrnn_evaluate"
SPECTRUM_ZOOM = 4  # px per step and per band in the spectra picture


@dataclass(frozen=True)
class Params:
    seed: int
    clips: Path
    cae: Path
    mtrnn: Path  # the audio-visual MTRNN (av_mtrnn_train's model)
    device: str
    threads: int
    recognise_steps: int  # Adam steps fitting each clip's Cs(0) to its pictures
    recognise_lr: float
    metrics: Path  # event kind accuracy and log-mel distance of generated sounds, per split
    baselines: Path  # real held-out sounds' accuracy, chance, the mean spectrum's distance
    stats: Path  # per held-out clip: kind and the kind named from the generated sound
    sounds: Path  # folder: <kind>-generated.wav and <kind>-real.wav of one held-out clip each
    spectra: Path  # PNG: real and generated log-mel spectra of the same clips


MODES = ("pictures_shown", "closed_loop")


@dataclass(frozen=True)
class Heard:
    """One split's clips: labels, real and generated log-mel spectra (steps 1.., dB) per mode."""

    clip_ids: np.ndarray
    labels: np.ndarray
    real: list[np.ndarray]
    generated: dict[str, list[np.ndarray]]


# --- pure functions -------------------------------------------------------------------------


def logmel_distance(a: np.ndarray, b: np.ndarray) -> float:
    """RMS difference in dB of two (steps, bands) log-mel spectra."""
    return float(np.sqrt(np.mean((a - b) ** 2)))


def kind_classifier(log_mels: list[np.ndarray], labels: np.ndarray, seed: int) -> Any:
    """Logistic regression on standardised pooled log-mels (`sound.pooled`)."""
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, random_state=seed))
    return model.fit(np.stack([sound.pooled(m) for m in log_mels]), labels)


def accuracy(classifier: Any, log_mels: list[np.ndarray], labels: np.ndarray) -> float:
    predicted = classifier.predict(np.stack([sound.pooled(m) for m in log_mels]))
    return float(np.mean(predicted == labels))


# --- the stage ------------------------------------------------------------------------------


def hear(
    params: Params, cae: Any, mtrnn: MTRNN, audio: dict, rows: dict[str, np.ndarray], device: Any
) -> Heard:
    """Recognise each clip from its pictures, generate closed loop, keep the sound channels."""
    stride, pictures = audio["frame_stride"], audio["picture_channels"]
    features, lengths = feature_sequences(cae, rows, stride, device)
    real = sound_sequences(rows, lengths, audio["step_seconds"], audio["params"])
    silent = torch.zeros(*features.shape[:2], mtrnn.config.io - pictures, device=device)
    inputs = torch.cat([features, silent], 2)  # the sound is never shown
    known = torch.arange(mtrnn.config.io, device=device) < pictures
    generator = torch.Generator().manual_seed(params.seed)
    cs0 = recognise(
        mtrnn, inputs, lengths, params.recognise_steps, params.recognise_lr, generator, known
    )
    with torch.no_grad():
        outputs = {
            "pictures_shown": mtrnn(inputs[:, :-1], cs0, known),
            "closed_loop": mtrnn.generate(inputs[:, 0], cs0, inputs.shape[1] - 1),
        }
    mean, scale = np.array(audio["mean"]), np.array(audio["scale"])
    generated = {
        mode: [  # output t is step t + 1: steps 1..n-1 of each clip
            sound.from_io(out[k, : n - 1, pictures:].cpu().numpy(), mean, scale)
            for k, n in enumerate(lengths.tolist())
        ]
        for mode, out in outputs.items()
    }
    return Heard(rows["clip_id"], rows["label"], [m[1:] for m in real], generated)


def load_av_mtrnn(path: Path, device: Any) -> tuple[MTRNN, dict]:
    """The audio-visual MTRNN and what its sound channels mean; a picture-only model is refused."""
    config, record = training.load_model(path, Config)
    if "sound" not in record:
        raise StageError(path, "is a pictures-only MTRNN: this stage needs av_mtrnn_train's model")
    mtrnn = MTRNN(config, sequences=len(record["clip_ids"]))
    training.load_state(path, mtrnn, record["state_dict"])
    info = dict(record["sound"])
    audio = SoundParams(**{k: info[k] for k in ("n_mels", "n_fft", "weight")})
    return mtrnn.to(device).eval(), {
        **info, "params": audio, "frame_stride": int(record["frame_stride"])
    }  # fmt: skip


def evaluate(params: Params) -> dict[str, Any]:
    if params.recognise_steps < 1 or not 0 < params.recognise_lr < 10:
        raise StageError(f"params.yaml: {STAGE}.recognise_steps", "steps >= 1 and 0 < lr < 10")
    device, device_info = training.prepare_torch(params.seed, params.device, params.threads, STAGE)
    cae = load_cae(params.cae, device)
    mtrnn, audio = load_av_mtrnn(params.mtrnn, device)
    columns = ["clip_id", "frames", "n_frames", "label", "audio", "n_samples", "audio_rate"]
    splits = training.load_splits(params.clips, ("train", "test"), columns)
    heard = {}
    for split, rows in splits.items():
        log.info("%s clips: recognise from the pictures, generate the sound", split)
        heard[split] = hear(params, cae, mtrnn, audio, rows, device)
        rate = int(rows["audio_rate"][0])

    train, test = heard["train"], heard["test"]
    classifier = kind_classifier(train.real, train.labels, params.seed)
    still = np.concatenate(train.real).mean(0)  # the mean training spectrum, held still
    metrics, baselines = {}, {}
    for split, h in heard.items():
        metrics[split] = {}
        for mode in MODES:
            heard_as = h.generated[mode]
            metrics[split] |= {
                f"{mode}_kind_accuracy": round(accuracy(classifier, heard_as, h.labels), 4),
                f"{mode}_logmel_db": round(np.mean([logmel_distance(g, r) for g, r in zip(
                    heard_as, h.real, strict=True)]), 3),
            }  # fmt: skip
        baselines[split] = {
            "mean_sound_logmel_db": round(
                np.mean([logmel_distance(np.broadcast_to(still, r.shape), r) for r in h.real]), 3
            )
        }
    baselines["test"] |= {
        "real_sound_kind_accuracy": round(accuracy(classifier, test.real, test.labels), 4),
        "chance": round(1 / len(np.unique(train.labels)), 4),
    }
    named = {
        mode: classifier.predict(np.stack([sound.pooled(m) for m in test.generated[mode]]))
        for mode in MODES
    }
    write_examples(params, test, audio, rate)  # the slow part first: an error there writes nothing
    write_json(params.metrics, metrics)
    write_json(params.baselines, baselines)
    write_json(params.stats, {
        "held_out": [
            {"clip_id": int(c), "kind": str(k), **{f"named_{m}": str(named[m][i]) for m in MODES}}
            for i, (c, k) in enumerate(zip(test.clip_ids, test.labels, strict=True))
        ],
        "step_seconds": audio["step_seconds"], "n_mels": audio["n_mels"], **device_info,
    })  # fmt: skip
    return device_info


def write_examples(params: Params, test: Heard, audio: dict, rate: int) -> None:
    """WAVs and spectra of the first held-out clip of each kind: real, and generated with the
    pictures shown."""
    picks = {str(label): k for k, label in reversed(list(enumerate(test.labels)))}
    kinds = sorted(picks)
    with atomic_dir(params.sounds) as tmp:
        for kind in kinds:
            k = picks[kind]
            generated = test.generated["pictures_shown"][k]
            for name, spectrum in (("real", test.real[k]), ("generated", generated)):
                wave = sound.waveform(
                    spectrum, rate, audio["step_seconds"], audio["n_fft"], params.seed
                )
                peak = max(float(np.abs(wave).max()), 1e-9)
                samples = np.round(wave / peak * 0.9 * 32767).astype(np.int16)
                wavfile.write(tmp / f"{kind}-{name}.wav", rate, samples)
    spectra = [[test.real[picks[k]], test.generated["pictures_shown"][picks[k]]] for k in kinds]
    low = min(float(s.min()) for pair in spectra for s in pair)
    high = max(float(s.max()) for pair in spectra for s in pair)
    steps = max(len(s) for pair in spectra for s in pair)
    tiles = np.zeros((len(kinds), 2, audio["n_mels"], steps), np.uint8)
    for r, pair in enumerate(spectra):
        for c, s in enumerate(pair):  # low bands at the bottom, time to the right
            tiles[r, c, :, : len(s)] = np.round(255 * (s.T[::-1] - low) / (high - low + 1e-9))
    zoomed = tiles.repeat(SPECTRUM_ZOOM, 2).repeat(SPECTRUM_ZOOM, 3)
    save_grid(params.spectra, zoomed)


def main(params: Params) -> dict[str, Any]:
    """Recognise clips from their pictures with the audio-visual MTRNN and judge its sound."""
    return evaluate(params)


if __name__ == "__main__":
    run_stage(STAGE, Params, main)
