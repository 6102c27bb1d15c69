"""word2vec vectors trained on the captions of one corpus: the stand-in for GoogleNews' vectors.

gensim `Word2Vec` on the tokenised captions of a clip table (the training corpus, never an
evaluation set): seeded, one worker thread and crc32 word hashing, so the same captions and
settings give the same bytes. Saved in word2vec binary format (a header line, then each word and
its float32 vector): the vectors read back exactly, and loading it cannot run code, unlike
gensim's pickled `.save` files. `text_features` reads this file or GoogleNews' `.bin` alike.
"""

from __future__ import annotations

import logging
import os
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from stages.common import kernels
from stages.common.atomic import write_json
from stages.common.cli import run_stage
from stages.common.errors import StageError
from stages.common.hashing import file_digest
from stages.mcn.corpus import read_clip_table, tokenize

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Training:
    """gensim Word2Vec settings."""

    vector_size: int  # GoogleNews: 300
    epochs: int
    window: int
    min_count: int
    skip_gram: bool  # false: CBOW
    negative: int  # negative samples per word


@dataclass(frozen=True)
class Params:
    seed: int
    clips: Path  # the clip table whose captions train the vectors
    training: Training
    out: Path  # the vectors, word2vec binary format
    metrics: Path
    stats: Path


def _crc_hash(text: str) -> int:
    """gensim's per-word seeding hash; Python's hash() changes with PYTHONHASHSEED."""
    return zlib.crc32(text.encode())


def train_vectors(sentences: list[list[str]], seed: int, cfg: Training):
    """gensim KeyedVectors trained on `sentences`; one worker thread, so reproducible."""
    from gensim.models import Word2Vec

    model = Word2Vec(
        sentences,
        vector_size=cfg.vector_size,
        window=cfg.window,
        min_count=cfg.min_count,
        sg=int(cfg.skip_gram),
        negative=cfg.negative,
        epochs=cfg.epochs,
        seed=seed,
        workers=1,
        hashfxn=_crc_hash,
    )
    return model.wv


def save_vectors(kv, path: Path) -> None:
    """word2vec binary format, atomically (gensim writes to a path, so a temporary one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        kv.save_word2vec_format(str(tmp), binary=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def build(params: Params) -> dict:
    """Train, save to `params.out`, write metrics and stats; returns the training seconds."""
    import gensim

    # Upper bounds catch typos: 1e9 dimensions asked for 119 GiB, 1e9 epochs never end.
    limits = {"vector_size": 4096, "epochs": 10_000, "window": 100, "negative": 100}
    limits["min_count"] = None
    for name, high in limits.items():
        value = getattr(params.training, name)
        if value < 1 or (high is not None and value > high):
            bound = f"1 to {high}" if high else ">= 1"
            raise StageError(f"params.yaml: word2vec.training.{name}", f"must be {bound}")
    captions = read_clip_table(params.clips)["caption"].tolist()
    sentences = [words for words in map(tokenize, captions) if words]
    if not sentences:
        raise StageError(params.clips, "no caption has any word to train word2vec on")
    counts = Counter(word for words in sentences for word in words)
    if max(counts.values()) < params.training.min_count:
        raise StageError(
            "params.yaml: word2vec.training.min_count",
            f"no word occurs {params.training.min_count} times (the most frequent: "
            f"{max(counts.values())}): the vocabulary would be empty",
        )
    started = time.perf_counter()
    kv = train_vectors(sentences, params.seed, params.training)
    seconds = time.perf_counter() - started
    save_vectors(kv, params.out)
    metrics = {
        "vocabulary": len(kv),
        "dim": kv.vector_size,
        "captions": len(captions),
        "tokens": sum(map(len, sentences)),
    }
    write_json(params.metrics, metrics)
    stats = {
        "sha256": file_digest(params.out),
        "captions_without_words": len(captions) - len(sentences),
        "gensim": gensim.__version__,
    }
    write_json(params.stats, {**stats, "cpu_kernels": kernels.record()})  # gensim's BLAS
    log.info("%d words x %d from %d captions", len(kv), kv.vector_size, len(captions))
    return {"train_seconds": round(seconds, 3)}


def main(params: Params) -> dict:
    """word2vec vectors trained on the captions of one clip table."""
    return build(params)


if __name__ == "__main__":
    run_stage("word2vec", Params, main)
