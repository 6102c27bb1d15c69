"""Stage `mcn_evaluate`: zero-shot text -> (video + audio) retrieval of one trained MCN run.

    python -m stages.mcn.evaluate [--params FILE] [--set order=AV-T --set seed=1]

On each held-out corpus (`eval_close`, like YouCook2; `eval_shifted`, like MSR-VTT), every caption
is a query and every clip a candidate, scored `text . (video + audio)` (the official protocol).
Clips without sound keep `text . video` as candidates, and their own queries count as misses, as
MSR-VTT's clips without audio do in the paper's protocol. Metrics (`stages/mcn/retrieval.py`,
ties counted as even chances): R@1, R@5, R@10 and the median rank, per corpus, into
`runs/<order>-seed<seed>.json`; the `mcn_study` stage gathers the runs into the order table.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stages.common import training
from stages.common.atomic import write_json
from stages.common.cli import run_stage
from stages.mcn import clipdata, retrieval
from stages.mcn.model import MCN, MODALITIES, Config
from stages.mcn.train import run_name, to_batch

log = logging.getLogger(__name__)
STAGE = "mcn_evaluate"
BATCH = 64  # clips embedded at once


@dataclass(frozen=True)
class Corpus:
    name: str
    audio_window: int


@dataclass(frozen=True)
class Params:
    seed: int
    order: str
    features: clipdata.FeatureDirs
    corpora: tuple[Corpus, ...]  # the held-out corpora
    models: Path
    runs: Path  # folder: one metrics JSON per run
    device: str
    threads: int


def embed_all(
    model: MCN, clips: clipdata.Clips, audio_crop: int, device: Any
) -> dict[str, np.ndarray]:
    """Every clip's three embeddings, BATCH clips at a time (eval mode, no gradients)."""
    parts: dict[str, list[np.ndarray]] = {m: [] for m in MODALITIES}
    with torch.no_grad():
        for start in range(0, len(clips), BATCH):
            rows = np.arange(start, min(start + BATCH, len(clips)))
            batch = to_batch(clips.take(rows), audio_crop, device)
            for m in MODALITIES:
                parts[m].append(model.embed(m, batch)[0].float().cpu().numpy())
    return {m: np.concatenate(v) for m, v in parts.items()}


def scores_of(embedded: dict[str, np.ndarray], has_audio: np.ndarray) -> np.ndarray:
    """text . (video + audio), the audio term left out for clips without sound."""
    candidates = embedded["video"] + embedded["audio"] * has_audio[:, None]
    return embedded["text"] @ candidates.T


def evaluate(params: Params) -> dict[str, Any]:
    device, device_info = training.prepare_torch(params.seed, params.device, params.threads, STAGE)
    name = run_name(params.order, params.seed)
    path = params.models / f"{name}.pt"
    config, record = training.load_model(path, Config)
    model = MCN(config)
    training.load_state(path, model, record["state_dict"])
    model.to(device).eval()
    results = {}
    for corpus in params.corpora:
        clips = clipdata.load(params.features, corpus.name, corpus.audio_window)
        embedded = embed_all(model, clips, int(record["audio_crop"]), device)
        scores = scores_of(embedded, clips.has_audio)
        measured = retrieval.metrics(scores, misses=~clips.has_audio)
        results[corpus.name] = {k: round(v, 4) for k, v in measured.items()}
        log.info("%s %s: R@10 %.3f over %d clips", name, corpus.name, measured["r10"], len(clips))
    write_json(params.runs / f"{name}.json", results)
    return {"run": name, **device_info}


def main(params: Params) -> dict[str, Any]:
    """Score one MCN run on the held-out corpora."""
    return evaluate(params)


if __name__ == "__main__":
    run_stage(STAGE, Params, main)
