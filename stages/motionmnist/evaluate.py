"""Stage `mdbigan_evaluate`: the paper's two experiments on the test split, made measurable.

    python -m stages.motionmnist.evaluate [--params FILE]

1. z_M of test videos (seed 002, figure 4): PCA and t-SNE pictures coloured by motion; k-means(8)
   NMI and ARI against the motion labels; linear probes on z_M for motion (should be high) and for
   the digit class (should be near chance, 0.1: the content must not leak into the motion code).
2. Regeneration from E(x) with a fresh z_C (figure 5), judged by a motion classifier and a digit
   classifier trained here on real train-split videos: does the regenerated video keep the
   source's motion, and is its digit the same in every frame?

Beside every number, what it means: the same z_M metrics on a 50-d PCA of the raw pixels and on a
random-weight encoder (`baselines`), and the judges on real test videos and on videos generated
from random motion codes (`judges`). The snapshots the training stage kept give the curve of NMI
and digit probe over training (no collapse), as a DVC plot.

Probes and judges are fit on the train split and scored on the test split; nothing is trained on
test videos.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.manifold import TSNE
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from stages.common import dataset, training
from stages.common.atomic import atomic_file, write_json
from stages.common.cli import run_stage
from stages.common.errors import StageError
from stages.common.images import save_grid
from stages.common.progress import progress
from stages.motionmnist.mdbigan import Config, Encoder, MDBiGAN, init_weights, shrink, to_video

log = logging.getLogger(__name__)
STAGE = "mdbigan_evaluate"
MOTIONS = 8


@dataclass(frozen=True)
class Params:
    seed: int
    data: Path
    model: Path
    history: Path
    device: str
    threads: int
    probe_rows: int  # train-split videos the probes and judges are fit on (a seeded subset)
    metrics: Path  # z_M and regeneration results of the model
    baselines: Path  # the same z_M metrics on pixel PCA and a random-weight encoder
    judges: Path  # the judges on real and on random-motion videos
    stats: Path
    curve: Path  # TSV: step, motion NMI, digit probe per snapshot
    scatter: Path  # PNG: PCA and t-SNE of test z_M coloured by motion
    regenerated: Path  # PNG: source and regenerated test videos


# --- pure functions -------------------------------------------------------------------------


def encode(encoder: Encoder, frames: np.ndarray, device: Any, batch: int = 256) -> np.ndarray:
    """z_M (n, T, d) of uint8 videos (n, T, H, W), the encoder in eval mode."""
    encoder.eval()
    out = []
    with torch.no_grad():
        for lo in range(0, len(frames), batch):
            x = to_video(torch.from_numpy(frames[lo : lo + batch]).to(device))
            out.append(encoder(x).float().cpu().numpy())
    return np.concatenate(out)


def kmeans_scores(features: np.ndarray, labels: np.ndarray, seed: int) -> tuple[float, float]:
    """k-means(8) of the features as they are -> (NMI, ARI) against `labels`.

    Not standardised: scaling every PCA component to unit variance would drown the few that
    carry the motion in the many that carry noise (NMI 0.59 instead of 1.00 on pixel PCA)."""
    found = KMeans(MOTIONS, n_init=10, random_state=seed).fit_predict(features)
    return (
        float(normalized_mutual_info_score(labels, found)),
        float(adjusted_rand_score(labels, found)),
    )


def probe(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray
) -> float:
    """Test accuracy of a linear (multinomial logistic) probe fit on the train features."""
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    model.fit(train_x, train_y)
    return float((model.predict(test_x) == test_y).mean())


def code_scores(
    train_z: np.ndarray, test_z: np.ndarray, train: dict, test: dict, seed: int
) -> dict[str, float]:
    """NMI/ARI (test) and motion/digit probes (fit train, score test) of per-video features."""
    nmi, ari = kmeans_scores(test_z, test["motion"], seed)
    return {
        "motion_nmi": nmi,
        "motion_ari": ari,
        "motion_probe": probe(train_z, train["motion"], test_z, test["motion"]),
        "digit_probe": probe(train_z, train["digit_class"], test_z, test["digit_class"]),
    }


def centroids(frames: np.ndarray) -> np.ndarray:
    """Intensity centroid (x, y) of every frame, (n, T, 2), in pixels; a blank frame gives the
    frame centre."""
    f = frames.astype(np.float64)
    h, w = f.shape[-2:]
    mass = f.sum((-2, -1))
    safe = np.where(mass > 0, mass, 1.0)
    x = (f.sum(-2) * np.arange(w)).sum(-1) / safe
    y = (f.sum(-1) * np.arange(h)).sum(-1) / safe
    return np.stack([np.where(mass > 0, x, w / 2), np.where(mass > 0, y, h / 2)], -1)


def travel(frames: np.ndarray) -> float:
    """Mean distance (px) the intensity centroid moves from a video's first frame to its last:
    whether generated videos move at all, beside the real ones."""
    ends = centroids(frames[:, [0, -1]])
    return float(np.linalg.norm(ends[:, 1] - ends[:, 0], axis=1).mean())


def digit_crops(frames: np.ndarray, size: int) -> np.ndarray:
    """A size x size window around each frame's centroid, (n, T, size*size) float."""
    n, t = frames.shape[:2]
    padded = np.pad(frames, ((0, 0), (0, 0), (size, size), (size, size)))
    centre = np.rint(centroids(frames)).astype(int) + size - size // 2
    crops = np.empty((n, t, size, size), np.float32)
    for i in range(n):
        for j in range(t):
            x, y = centre[i, j]
            crops[i, j] = padded[i, j, y : y + size, x : x + size]
    return crops.reshape(n, t, -1) / 255.0


class Judges:
    """Classifiers trained on real videos: motion from the centroid trajectory, digit from a
    window around the centroid of each frame."""

    def __init__(
        self, frames: np.ndarray, motion: np.ndarray, digit: np.ndarray, crop: int, seed: int
    ) -> None:
        self.crop = crop
        self.motion = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        self.motion.fit(centroids(frames).reshape(len(frames), -1), motion)
        crops = digit_crops(frames[:, ::4], crop)  # every 4th frame is plenty
        # an RBF SVM on 50 PCA components: 0.94 of real test videos judged right (majority of
        # frames, 32 px frames) where a linear (ridge) classifier managed 0.84, too low a ceiling
        # for the generative families' goals; 9 s on 20,000 crops
        components = min(50, crops.shape[-1])  # a 16 px test frame's crop has 49 pixels
        self.digit = make_pipeline(PCA(components, random_state=seed), SVC(C=5.0))
        self.digit.fit(crops.reshape(-1, crops.shape[-1]), np.repeat(digit, crops.shape[1]))

    def motion_of(self, frames: np.ndarray) -> np.ndarray:
        return self.motion.predict(centroids(frames).reshape(len(frames), -1))

    def digits_by_frame(self, frames: np.ndarray) -> np.ndarray:
        """The judged digit of every frame, (n, T)."""
        crops = digit_crops(frames, self.crop)
        return self.digit.predict(crops.reshape(-1, crops.shape[-1])).reshape(len(frames), -1)

    def digit_of(self, frames: np.ndarray) -> np.ndarray:
        """Each video's digit: the one most of its frames are judged to show."""
        return np.array(
            [np.bincount(row, minlength=10).argmax() for row in self.digits_by_frame(frames)]
        )

    def digit_consistency(self, frames: np.ndarray) -> float:
        """Mean share of a video's frames whose judged digit is the video's most common one."""
        judged = self.digits_by_frame(frames)
        majority = np.array([np.bincount(row, minlength=10).max() for row in judged])
        return float((majority / judged.shape[1]).mean())


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """Generated (n, T, 1, H, W) in [-1, 1] -> uint8 (n, T, H, W)."""
    return (
        ((video[:, :, 0].float().cpu().numpy() + 1.0) * 127.5).clip(0, 255).round().astype(np.uint8)
    )


def regenerate(
    model: MDBiGAN, frames: np.ndarray, seed: int, device: Any, batch: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """(G(z_C, E(x)), G(z_C, z_M ~ motion generator)), each with a fresh z_C per video."""
    model.eval()
    generator = torch.Generator(device).manual_seed(seed)
    from_code, from_prior = [], []
    with torch.no_grad():
        for lo in range(0, len(frames), batch):
            x = to_video(torch.from_numpy(frames[lo : lo + batch]).to(device))
            z_content = torch.randn(
                len(x), model.config.dim_z_content, device=device, generator=generator
            )
            from_code.append(to_uint8(model.generator(z_content, model.encoder(x))))
            z_prior = model.generator.motion(len(x), generator)
            from_prior.append(to_uint8(model.generator(z_content, z_prior)))
    return np.concatenate(from_code), np.concatenate(from_prior)


# --- pictures -------------------------------------------------------------------------------


def scatter_png(path: Path, z: np.ndarray, motion: np.ndarray, names: list[str], seed: int) -> None:
    """The paper's figure 4: z_M of test videos in 2-D (PCA, t-SNE), one colour per motion."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    flat = StandardScaler().fit_transform(z)
    views = {
        "PCA": PCA(2, random_state=seed).fit_transform(flat),
        "t-SNE": TSNE(2, init="pca", random_state=seed, perplexity=30).fit_transform(flat),
    }
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    for ax, (name, xy) in zip(axes, views.items(), strict=True):
        points = ax.scatter(xy[:, 0], xy[:, 1], c=motion, cmap="tab10", s=4, vmin=0, vmax=9)
        ax.set_title(f"z_M of test videos, {name}")
        ax.set_xticks([])
        ax.set_yticks([])
    handles, _ = points.legend_elements()
    fig.legend(handles, names, title="motion", loc="center right", fontsize="small")
    fig.subplots_adjust(right=0.8)
    with atomic_file(path) as handle:
        fig.savefig(handle, format="png", dpi=90, metadata={"Software": None})
    plt.close(fig)


# --- the stage ------------------------------------------------------------------------------


def load_splits(params: Params, config: Config) -> dict[str, dict[str, np.ndarray]]:
    """Train and test rows in one read, frames pooled to the model's size (as training saw them)."""
    splits = training.load_splits(
        params.data, ("train", "test"), ["frames", "motion", "digit_class"]
    )
    frames, size = splits["test"]["frames"].shape[1], splits["test"]["frames"].shape[-1]
    if size % config.size or frames != config.frames:
        raise StageError(
            params.model,
            f"model is for {config.frames} frames of {config.size} px; "
            f"{params.data} holds {frames} of {size} px",
        )
    for rows in splits.values():
        rows["frames"] = shrink(torch.from_numpy(rows["frames"]), size // config.size).numpy()
        rows["motion"] = rows["motion"].astype(np.int64)
        rows["digit_class"] = rows["digit_class"].astype(np.int64)
    return splits


def subset(rows: dict[str, np.ndarray], count: int, seed: int) -> dict[str, np.ndarray]:
    n = len(rows["motion"])
    pick = np.sort(np.random.default_rng(seed).permutation(n)[: min(count, n)])
    return {k: v[pick] for k, v in rows.items()}


def load(path: Path, device: Any, snapshot: bool = False) -> tuple[MDBiGAN | Encoder, int]:
    """The model of a model file and its step; of a training snapshot, the encoder alone (the
    weights snapshots keep)."""
    config, record = training.load_model(path, Config)
    weights = record["state_dict"]
    if snapshot:
        weights = {k.removeprefix("encoder."): v for k, v in weights.items()}
    model = Encoder(config) if snapshot else MDBiGAN(config)
    training.load_state(path, model, weights)
    return model.to(device).eval(), int(record["step"])


def evaluate(params: Params) -> dict[str, Any]:
    if params.probe_rows < 100:
        raise StageError(
            f"params.yaml: {STAGE}.probe_rows", f"must be at least 100, got {params.probe_rows}"
        )
    device, device_info = training.prepare_torch(params.seed, params.device, params.threads, STAGE)
    model, step = load(params.model, device)
    splits = load_splits(params, model.config)
    test, train = splits["test"], subset(splits["train"], params.probe_rows, params.seed)
    digit_px = 28 * model.config.size // 64  # 28 px MNIST digits on 64 px canvases, pooled

    def per_video(encoder: Encoder) -> tuple[np.ndarray, np.ndarray]:
        return (
            encode(encoder, train["frames"], device).reshape(len(train["frames"]), -1),
            encode(encoder, test["frames"], device).reshape(len(test["frames"]), -1),
        )

    log.info("z_M of %d train and %d test videos", len(train["motion"]), len(test["motion"]))
    z_train, z_test = per_video(model.encoder)
    ours = code_scores(z_train, z_test, train, test, params.seed)

    log.info("baselines: pixel PCA, random-weight encoder")
    torch.manual_seed(params.seed)
    random_encoder = Encoder(model.config)
    init_weights(random_encoder)
    pixels = PCA(50, random_state=params.seed).fit(
        train["frames"].reshape(len(train["frames"]), -1)
    )
    baselines = {
        "pixels_pca": code_scores(
            pixels.transform(train["frames"].reshape(len(train["frames"]), -1)),
            pixels.transform(test["frames"].reshape(len(test["frames"]), -1)),
            train,
            test,
            params.seed,
        ),
        "random_encoder": code_scores(
            *per_video(random_encoder.to(device)), train, test, params.seed
        ),
    }

    log.info("judges, regeneration")
    judges = Judges(
        train["frames"], train["motion"], train["digit_class"], crop=digit_px, seed=params.seed
    )
    from_code, from_prior = regenerate(model, test["frames"], params.seed, device)
    ours |= {
        "regenerated_motion_agreement": float(
            (judges.motion_of(from_code) == test["motion"]).mean()
        ),
        "regenerated_digit_consistency": judges.digit_consistency(from_code),
        "regenerated_travel_px": travel(from_code),
    }
    judged = {
        "real_motion_accuracy": float((judges.motion_of(test["frames"]) == test["motion"]).mean()),
        "real_digit_accuracy": float(
            (judges.digit_of(test["frames"]) == test["digit_class"]).mean()
        ),
        "real_digit_consistency": judges.digit_consistency(test["frames"]),
        "random_motion_agreement": float((judges.motion_of(from_prior) == test["motion"]).mean()),
        "real_travel_px": travel(test["frames"]),
    }

    curve = snapshot_curve(params, train, test, device)
    write_json(params.metrics, ours)
    write_json(params.baselines, baselines)
    write_json(params.judges, judged)
    write_json(
        params.stats,
        {
            "model_step": step,
            "train_videos_for_probes": len(train["motion"]),
            "test_videos": len(test["motion"]),
            "frame_size": model.config.size,
            **device_info,
        },
    )
    write_curve(params.curve, curve)
    log.info("pictures")
    shown = np.random.default_rng(params.seed).permutation(len(z_test))[: params.probe_rows]
    shown.sort()  # t-SNE of every test video would take minutes at paper scale
    names = dataset.describe(params.data)["metadata"]["motions"]
    scatter_png(params.scatter, z_test[shown], test["motion"][shown], names, params.seed)
    examples = [int(np.flatnonzero(test["motion"] == m)[0]) for m in range(MOTIONS)]
    # rows: a source video, then its regeneration; every other frame
    tiles = np.stack([test["frames"][examples], from_code[examples]], 1)[:, :, ::2]
    save_grid(params.regenerated, tiles.reshape(-1, *tiles.shape[2:]))
    return device_info


def snapshot_curve(params: Params, train: dict, test: dict, device: Any) -> list[dict[str, float]]:
    """Motion NMI and digit probe of every snapshot the training kept, by step, on a seeded
    subset of `probe_rows` test videos (the final model's numbers use them all)."""
    test = subset(test, params.probe_rows, params.seed)
    paths = sorted(params.history.glob("step-*.pt"))
    rows = []
    for path in progress(paths, desc=f"{STAGE} snapshots", unit="model"):
        encoder, _ = load(path, device, snapshot=True)
        z_train = encode(encoder, train["frames"], device).reshape(len(train["frames"]), -1)
        z_test = encode(encoder, test["frames"], device).reshape(len(test["frames"]), -1)
        nmi, _ = kmeans_scores(z_test, test["motion"], params.seed)
        rows.append(
            {
                "step": int(path.stem.split("-")[1]),
                "motion_nmi": round(nmi, 4),
                "digit_probe": round(
                    probe(z_train, train["digit_class"], z_test, test["digit_class"]), 4
                ),
            }
        )
    return rows


def write_curve(path: Path, rows: list[dict[str, float]]) -> None:
    with atomic_file(path, "w") as handle:
        writer = csv.DictWriter(
            handle, ["step", "motion_nmi", "digit_probe"], delimiter="\t", lineterminator="\n"
        )
        writer.writeheader()
        writer.writerows(rows)


def main(params: Params) -> dict[str, Any]:
    """Measure MDBiGAN's motion code and regenerations on the MotionMNIST test split."""
    return evaluate(params)


if __name__ == "__main__":
    run_stage(STAGE, Params, main)
