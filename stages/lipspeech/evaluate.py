"""Stage `lipspeech_evaluate`: the paper's figures made numbers, on held-out utterances (seed 003).

    python -m stages.lipspeech.evaluate [--params FILE]

Every number is on the test split of the pairs (utterances never seen in training), for the
paper's three models: (b) `dnn`, the randomly initialised DNN; (c) `drm`, the GGDRM converting by
mean-field before fine-tuning; (d) `drm_finetuned`, its unrolled nets after fine-tuning; and two
baselines fitted on the train split: the train mean and linear least squares.

- lip -> speech (`lip_to_speech`): MCD in dB (frame-synchronous, c0 excluded, the project's
  definition) and the global variance ratio: per utterance and mel-cepstral dimension c1.., the
  variance over time of the prediction over that of the real mel-cepstra, averaged. 1 is the real
  sequences' frame-to-frame change; near 0 is the paper's "averaged over frames".
- speech -> lip (`speech_to_lip`): RMSE of the lip features, and PSNR of the lip image rebuilt
  from the predicted features (inverse PCA, inverse DCT) against the one rebuilt from the real
  features.
- The paper's two figures for one held-out utterance: `lips` (rows: real, (b), (c), (d); frames
  across) and `spectrograms` (rows: real, (b), (c), (d); the spectral envelopes the mel-cepstra
  describe).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stages.common import dataset, training
from stages.common.atomic import write_json
from stages.common.cli import run_stage
from stages.common.errors import StageError
from stages.common.images import save_grid
from stages.lipspeech import melcep
from stages.lipspeech.colormap import spectrogram_image
from stages.lipspeech.dnn import Config as DNNConfig
from stages.lipspeech.dnn import both_directions
from stages.lipspeech.ggdrm import GGDRM, Config
from stages.lipspeech.lip_transform import LipTransform
from stages.lipspeech.mcd import mcd

log = logging.getLogger(__name__)
STAGE = "lipspeech_evaluate"
MODELS = ("dnn", "drm", "drm_finetuned")
FIGURE_FRAMES = 8


@dataclass(frozen=True)
class Params:
    seed: int
    pairs: Path
    mcep: Path  # the mel-cepstrum dataset: its analysis (alpha, FFT size) draws the spectra
    transform: Path  # lip_features' fitted DCT + PCA, to rebuild lip images
    ggdrm: Path
    dnn: Path
    device: str
    threads: int
    mean_field_iterations: int  # sweeps of the GGDRM's conversion (c)
    lip_to_speech: Path  # metrics: MCD and global variance ratio per model
    speech_to_lip: Path  # metrics: lip feature RMSE and rebuilt-image PSNR per model
    baselines: Path  # the same for the train mean and least squares
    stats: Path
    lips: Path  # PNG: the paper's figure 1
    spectrograms: Path  # PNG: the paper's figure 2


# --- pure functions -------------------------------------------------------------------------


def global_variance_ratio(predicted: np.ndarray, real: np.ndarray, utterances: np.ndarray) -> float:
    """Mean over utterances and dimensions c1.. of var_t(predicted) / var_t(real)."""
    ratios = []
    for name in np.unique(utterances):
        rows = utterances == name
        ratios.append(predicted[rows, 1:].var(0) / (real[rows, 1:].var(0) + 1e-12))
    return float(np.mean(ratios))


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)))


def image_psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two 0..255 images."""
    mse = float(np.mean((a - b) ** 2))
    return 100.0 if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def least_squares(given: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Weights (d + 1, k) of the affine least-squares map given -> wanted."""
    return np.linalg.lstsq(np.c_[given, np.ones(len(given))], wanted, rcond=None)[0]


def affine(given: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return np.c_[given, np.ones(len(given))] @ weights


# --- the stage ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Predictors:
    """Standardised x -> y and y -> x for each model, on numpy in raw units."""

    drm: GGDRM
    finetuned: torch.nn.ModuleDict
    dnn: torch.nn.ModuleDict
    scale: dict[str, np.ndarray]  # x_mean, x_std, y_mean, y_std
    iterations: int
    device: Any

    def __call__(self, model: str, given: np.ndarray, direction: str) -> np.ndarray:
        src, dst = ("x", "y") if direction == "x2y" else ("y", "x")
        standard = (given - self.scale[f"{src}_mean"]) / self.scale[f"{src}_std"]
        inputs = torch.from_numpy(standard.astype(np.float32)).to(self.device)
        with torch.no_grad():
            if model == "drm":
                out = self.drm.convert(inputs, direction, self.iterations)
            else:
                out = (self.dnn if model == "dnn" else self.finetuned)[direction](inputs)
        return (
            out.cpu().numpy().astype(np.float64) * self.scale[f"{dst}_std"]
            + self.scale[f"{dst}_mean"]
        )


def load_predictors(params: Params, device: Any) -> Predictors:
    config, record = training.load_model(params.ggdrm, Config)
    if isinstance(config.hidden, list):
        config = Config(config.x_dims, config.y_dims, tuple(config.hidden))
    drm = GGDRM(config)
    training.load_state(params.ggdrm, drm, record["state_dict"])
    finetuned = both_directions(DNNConfig(config.x_dims, config.y_dims, config.hidden))
    training.load_state(params.ggdrm, finetuned, record["finetuned"])
    dnn_config, dnn_record = training.load_model(params.dnn, DNNConfig)
    dnn_config = DNNConfig(dnn_config.x_dims, dnn_config.y_dims, tuple(dnn_config.hidden))
    if (dnn_config.x_dims, dnn_config.y_dims) != (config.x_dims, config.y_dims):
        raise StageError(params.dnn, "its input sizes differ from the GGDRM's: retrain both")
    dnn = both_directions(dnn_config)
    training.load_state(params.dnn, dnn, dnn_record["state_dict"])
    scale = {k: v.double().numpy() for k, v in record["standardisation"].items()}
    return Predictors(
        drm.to(device).eval(), finetuned.to(device).eval(), dnn.to(device).eval(), scale,
        params.mean_field_iterations, device,
    )  # fmt: skip


def evaluate(params: Params) -> dict[str, Any]:
    if params.mean_field_iterations < 1:
        raise StageError(f"params.yaml: {STAGE}.mean_field_iterations", "must be at least 1")
    device, device_info = training.prepare_torch(params.seed, params.device, params.threads, STAGE)
    predict = load_predictors(params, device)
    transform = LipTransform.load(params.transform)
    analysis = dataset.describe(params.mcep)["metadata"]["analysis"]
    columns = ["utterance", "lip", "mcep"]
    splits = training.load_splits(params.pairs, ("train", "test"), columns)
    train, test = splits["train"], splits["test"]
    x, y = test["lip"].astype(np.float64), test["mcep"].astype(np.float64)
    names = test["utterance"]

    speech = {m: predict(m, x, "x2y") for m in MODELS}
    lips = {m: predict(m, y, "y2x") for m in MODELS}
    x_train, y_train = train["lip"].astype(np.float64), train["mcep"].astype(np.float64)
    speech["train_mean"] = np.broadcast_to(y_train.mean(0), y.shape)
    speech["linear"] = affine(x, least_squares(x_train, y_train))
    lips["train_mean"] = np.broadcast_to(x_train.mean(0), x.shape)
    lips["linear"] = affine(y, least_squares(y_train, x_train))

    real_images = rebuild(transform, x, names)
    scores = {}
    for m in speech:
        scores[m] = {
            "mcd_db": round(mcd(speech[m], y), 4),
            "gv_ratio": round(global_variance_ratio(speech[m], y, names), 4),
            "rmse": round(rmse(lips[m], x), 4),
            "psnr_db": round(image_psnr(rebuild(transform, lips[m], names), real_images), 3),
        }
    write_json(params.lip_to_speech, {
        k: {m: scores[m][k] for m in MODELS} for k in ("mcd_db", "gv_ratio")
    })  # fmt: skip
    write_json(params.speech_to_lip, {
        k: {m: scores[m][k] for m in MODELS} for k in ("rmse", "psnr_db")
    })  # fmt: skip
    write_json(params.baselines, {
        "lip_to_speech": {f"{k}_{m}": scores[m][k] for m in ("train_mean", "linear")
                          for k in ("mcd_db", "gv_ratio")},
        "speech_to_lip": {f"{k}_{m}": scores[m][k] for m in ("train_mean", "linear")
                          for k in ("rmse", "psnr_db")},
    })  # fmt: skip

    shown = str(names[0])  # the figures: the first held-out utterance
    rows = names == shown
    figure_lips(params.lips, transform, x[rows], {m: lips[m][rows] for m in MODELS}, shown)
    figure_spectra(params.spectrograms, y[rows], {m: speech[m][rows] for m in MODELS}, analysis)
    write_json(params.stats, {
        "test_utterances": len(np.unique(names)), "test_frames": len(names),
        "figure_utterance": shown, "mcd": "frame-synchronous, c0 excluded",
        **device_info,
    })  # fmt: skip
    return device_info


def rebuild(transform: LipTransform, features: np.ndarray, names: np.ndarray) -> np.ndarray:
    """Lip images (n, h, w), 0..255, of feature rows, each with its utterance's offset."""
    out = np.empty((len(features), int(transform.roi[3]), int(transform.roi[2])))
    for name in np.unique(names):
        rows = names == name
        out[rows] = transform.rebuild(features[rows], str(name))
    return out


def figure_lips(
    path: Path, transform: LipTransform, real: np.ndarray, predicted: dict, utterance: str
) -> None:
    """Rows real / (b) / (c) / (d), FIGURE_FRAMES frames spread over the utterance."""
    pick = np.linspace(0, len(real) - 1, FIGURE_FRAMES).round().astype(int)
    versions = [real, *(predicted[m] for m in MODELS)]
    tiles = np.stack([transform.rebuild(v[pick], utterance) for v in versions])
    save_grid(path, np.round(tiles).astype(np.uint8).repeat(2, 2).repeat(2, 3))


def figure_spectra(path: Path, real: np.ndarray, predicted: dict, analysis: dict) -> None:
    """Rows real / (b) / (c) / (d): the log-amplitude envelopes (dB) the mel-cepstra describe."""
    alpha, nfft = float(analysis["alpha"]), int(analysis["nfft"])
    spectra = [
        20 / np.log(10) * melcep.log_amplitude(v, alpha, nfft)
        for v in [real, *(predicted[m] for m in MODELS)]
    ]
    hi = float(spectra[0].max())
    images = [spectrogram_image(s, hi - 60.0, hi) for s in spectra]
    save_grid(path, np.stack(images)[:, None])


def main(params: Params) -> dict[str, Any]:
    """Score (b) the DNN, (c) the GGDRM and (d) the fine-tuned GGDRM on held-out utterances."""
    return evaluate(params)


if __name__ == "__main__":
    run_stage(STAGE, Params, main)
