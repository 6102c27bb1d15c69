"""Stage `mcn_study`: the seed's modality-order table, over seeds, beside chance and a linear map.

    python -m stages.mcn.study [--params FILE]

Gathers every run `mcn_evaluate` scored (`runs/<order>-seed<seed>.json`) into, per order and
held-out corpus, the mean and standard deviation over seeds of R@1 / R@5 / R@10 / median rank, so
an order effect can be told from seed noise (the paper ran each order once). Beside them:
- chance (a random ranking of the corpus's clips);
- `linear`: ridge regression from the caption's mean word vector to the clip's video feature and
  mean log-mel spectrum (standardised, fitted on the training corpus's clips), candidates scored
  by cosine: the simplest joint space, so MCN's gain over it is visible.
Writes `order_table.md` (with the paper's numbers for reference), `metrics` (R@10 per order and
corpus), `stats` (everything), and `plot` (R@10 per order, a DVC bar plot).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stages.common.atomic import atomic_file, write_json
from stages.common.cli import run_stage
from stages.common.errors import StageError
from stages.mcn import clipdata, retrieval
from stages.mcn.evaluate import Corpus
from stages.mcn.train import ORDERS, run_name

STAGE = "mcn_study"
# The seed's table (zero-shot text -> video, %): YouCook2 ~ eval_close, MSR-VTT ~ eval_shifted
PAPER = {
    "AV-T": {"eval_close": (1.61, 5.97, 9.43), "eval_shifted": (0.18, 0.92, 1.63)},
    "AT-V": {"eval_close": (5.16, 11.3, 15.3), "eval_shifted": (0.14, 0.61, 1.35)},
    "VT-A": {"eval_close": (1.10, 5.13, 7.13), "eval_shifted": (0.14, 0.53, 1.14)},
}
KEYS = ("r1", "r5", "r10", "median_rank")


@dataclass(frozen=True)
class Params:
    orders: tuple[str, ...]  # the runs the study expects: every order with every seed
    seeds: tuple[int, ...]
    features: clipdata.FeatureDirs
    train_corpus: str
    train_window: int
    corpora: tuple[Corpus, ...]
    runs: Path
    ridge: float  # the linear baseline's L2 penalty (on standardised features)
    metrics: Path
    stats: Path
    table: Path
    plot: Path


def pooled_text(clips: clipdata.Clips) -> np.ndarray:
    """Mean of each caption's known word vectors."""
    return clips.words.sum(1) / np.maximum(clips.n_words, 1)[:, None]


def pooled_media(clips: clipdata.Clips) -> np.ndarray:
    """The clip's video feature and its mean log-mel over the valid frames (zeros without sound)."""
    frames = np.arange(clips.audio.shape[2])[None, :] < clips.audio_frames[:, None]
    audio = (clips.audio.astype(np.float32) * frames[:, None, :]).sum(2)
    audio = audio / np.maximum(clips.audio_frames, 1)[:, None] * clips.has_audio[:, None]
    return np.concatenate([clips.video, audio], 1)


def fit_ridge(x: np.ndarray, y: np.ndarray, penalty: float) -> dict[str, np.ndarray]:
    """Ridge regression x -> y on standardised columns."""
    mx, sx = x.mean(0), x.std(0) + 1e-6
    my, sy = y.mean(0), y.std(0) + 1e-6
    xs, ys = (x - mx) / sx, (y - my) / sy
    w = np.linalg.solve(xs.T @ xs + penalty * np.eye(x.shape[1]), xs.T @ ys)
    return {"mx": mx, "sx": sx, "my": my, "sy": sy, "w": w}


def ridge_scores(model: dict[str, np.ndarray], text: np.ndarray, media: np.ndarray) -> np.ndarray:
    """Cosine between each caption's predicted (standardised) media vector and every clip's."""
    predicted = ((text - model["mx"]) / model["sx"]) @ model["w"]
    target = (media - model["my"]) / model["sy"]
    predicted /= np.linalg.norm(predicted, axis=1, keepdims=True) + 1e-12
    target /= np.linalg.norm(target, axis=1, keepdims=True) + 1e-12
    return predicted @ target.T


def gather(runs: Path, orders: tuple[str, ...], seeds: tuple[int, ...]) -> dict[str, list[dict]]:
    """Every expected run's results by order; a missing one is an error naming it."""
    found: dict[str, list[dict]] = {}
    for order in orders:
        if order not in ORDERS:
            raise StageError(f"params.yaml: {STAGE}.orders", f"unknown order {order!r}")
        for seed in seeds:
            path = runs / f"{run_name(order, seed)}.json"
            if not path.is_file():
                raise StageError(path, "missing: run its mcn_train and mcn_evaluate stages")
            found.setdefault(order, []).append(json.loads(path.read_text()))
    return found


def spread(results: list[dict], corpus: str) -> dict[str, tuple[float, float]]:
    values = {k: np.array([r[corpus][k] for r in results]) for k in KEYS}
    return {k: (float(v.mean()), float(v.std())) for k, v in values.items()}


def study(params: Params) -> dict[str, Any]:
    runs = gather(params.runs, params.orders, params.seeds)
    names = [c.name for c in params.corpora]
    train = clipdata.load(params.features, params.train_corpus, params.train_window)
    train = train.take(clipdata.trainable(train))
    linear = fit_ridge(pooled_text(train), pooled_media(train), params.ridge)
    baselines = {}
    for corpus in params.corpora:
        clips = clipdata.load(params.features, corpus.name, corpus.audio_window)
        scores = ridge_scores(linear, pooled_text(clips), pooled_media(clips))
        baselines[corpus.name] = {
            "chance": retrieval.chance(len(clips)),
            "linear": retrieval.metrics(scores, misses=~clips.has_audio),
            "clips": len(clips),
        }
    table = {o: {c: spread(runs[o], c) for c in names} for o in ORDERS if o in runs}
    seeds = {o: len(r) for o, r in runs.items()}
    write_json(params.metrics, {
        c: {f"{o}_r10": round(table[o][c]["r10"][0], 4) for o in table} for c in names
    })  # fmt: skip
    write_json(params.stats, {"seeds": seeds, "orders": table, "baselines": baselines})
    write_table(params.table, table, baselines, names, seeds)
    write_plot(params.plot, table, baselines, names)
    return {"runs": sum(seeds.values())}


def write_table(path: Path, table: dict, baselines: dict, names: list[str], seeds: dict) -> None:
    def cell(mean: float, std: float, percent: bool = True) -> str:
        scale = 100 if percent else 1
        return f"{scale * mean:.1f} ± {scale * std:.1f}"

    lines = [
        "# MCN modality-order study (zero-shot text -> video + audio)",
        "",
        "Ours: mean ± std over seeds (runs per order in brackets); R@K in %, median rank as is. "
        "Paper (seed 004, YouCook2 / MSR-VTT, one run each) beside, for reference only: the "
        "stand-in corpora are not those datasets.",
        "",
    ]
    for corpus in names:
        b = baselines[corpus]
        lines += [f"## {corpus} ({b['clips']} clips)", "",
                  "| order | R@1 | R@5 | R@10 | median rank | paper R@1 / R@5 / R@10 |",
                  "|---|--:|--:|--:|--:|--:|"]  # fmt: skip
        for order, by_corpus in table.items():
            m = by_corpus[corpus]
            paper = PAPER.get(order, {}).get(corpus)
            lines.append(
                f"| {order} [{seeds[order]}] | {cell(*m['r1'])} | {cell(*m['r5'])} | "
                f"{cell(*m['r10'])} | {cell(*m['median_rank'], percent=False)} | "
                + (" / ".join(f"{v:g}" for v in paper) if paper else "-")
                + " |"
            )
        for name in ("linear", "chance"):
            m = b[name]
            lines.append(
                f"| {name} | {100 * m['r1']:.1f} | {100 * m['r5']:.1f} | {100 * m['r10']:.1f} | "
                f"{m['median_rank']:.1f} | - |"
            )
        lines.append("")
    with atomic_file(path, "w") as handle:
        handle.write("\n".join(lines))


def write_plot(path: Path, table: dict, baselines: dict, names: list[str]) -> None:
    """One row per (variant, corpus): R@10 in %, for a DVC bar plot."""
    with atomic_file(path, "w") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["variant", "corpus", "r10"])
        for corpus in names:
            for order, by_corpus in table.items():
                writer.writerow([order, corpus, f"{100 * by_corpus[corpus]['r10'][0]:.2f}"])
            for name in ("linear", "chance"):
                writer.writerow([name, corpus, f"{100 * baselines[corpus][name]['r10']:.2f}"])


def main(params: Params) -> dict[str, Any]:
    """Gather the runs into the modality-order table beside chance and a linear map."""
    return study(params)


if __name__ == "__main__":
    run_stage(STAGE, Params, main)
