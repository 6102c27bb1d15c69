"""word2vec features of clip captions: (20, 300) per caption, as the MCN/HowTo100M code builds them.

Tokens: regex `[\\w']+`, case kept; words not in the vocabulary dropped; the first 20 kept words,
zero-padded. A caption with no known word gets zeros and a warning row in the failures table
(the documented fallback; MCN's loader does the same silently).

Vectors: a word2vec file from `word2vec` in params (GoogleNews `.bin`, the word2vec text format,
or a gensim `KeyedVectors.save` file), else vectors trained with gensim's Word2Vec on the captions
of the `train_corpus` (seeded, one worker thread: deterministic), saved beside the features in
word2vec binary format and recorded by sha256.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from stages.common import dataset
from stages.common.atomic import write_json
from stages.common.cli import run_stage
from stages.common.errors import StageError
from stages.common.hashing import file_digest
from stages.mcn import corpus as mcn_corpus
from stages.mcn import shards
from stages.mcn.corpus import Corpus, Failures, Rows, Shard

log = logging.getLogger(__name__)

ROOT = mcn_corpus.FEATURES / "text"
TRAINED = ROOT / "word2vec.bin"
VERSION = "text_features/v1"
TOKEN = re.compile(r"[\w']+")
MAX_WORDS = 20
DIM = 300


@dataclass(frozen=True)
class Training:
    """gensim Word2Vec settings for vectors trained on the corpus captions."""

    epochs: int = 50
    window: int = 5
    min_count: int = 1
    skip_gram: bool = True
    negative: int = 5


@dataclass(frozen=True)
class Params:
    seed: int
    corpora: tuple[Corpus, ...]
    word2vec: Path | None = (
        None  # e.g. GoogleNews-vectors-negative300.bin; None = train on captions
    )
    train_corpus: str = "train"  # whose captions train the vectors (never the evaluation sets)
    training: Training = Training()
    videos_per_shard: int = 16


class Context(NamedTuple):
    record: dict[str, Any]
    vectors: str  # path of the word2vec file every shard reads


# --- pure functions -------------------------------------------------------------------------------


def tokenize(caption: str) -> list[str]:
    return TOKEN.findall(caption)


def caption_matrix(
    caption: str, vocab: dict[str, int], vectors: np.ndarray
) -> tuple[np.ndarray, list[str]]:
    """(20, dim) float32: vectors of the first 20 in-vocabulary tokens, zero-padded; the words."""
    words = [w for w in tokenize(caption) if w in vocab][:MAX_WORDS]
    out = np.zeros((MAX_WORDS, vectors.shape[1]), np.float32)
    if words:
        out[: len(words)] = vectors[[vocab[w] for w in words]]
    return out, words


def _crc_hash(text: str) -> int:
    """gensim's per-word seeding hash; Python's hash() changes with PYTHONHASHSEED."""
    return zlib.crc32(text.encode())


def train_vectors(captions: list[str], seed: int, cfg: Training):
    """Word2Vec (300-d) on tokenised captions; one worker thread, so the result is reproducible."""
    from gensim.models import Word2Vec

    sentences = [tokenize(c) for c in captions if tokenize(c)]
    if not sentences:
        raise StageError("params.yaml: text_features.train_corpus", "no caption has any word")
    model = Word2Vec(
        sentences,
        vector_size=DIM,
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


@functools.lru_cache(maxsize=1)
def load_vectors(path: str) -> tuple[dict[str, int], np.ndarray]:
    from gensim.models import KeyedVectors

    try:
        if path.endswith((".bin", ".bin.gz")):
            kv = KeyedVectors.load_word2vec_format(path, binary=True)
        elif path.endswith((".txt", ".txt.gz", ".vec")):
            kv = KeyedVectors.load_word2vec_format(path, binary=False)
        else:
            kv = KeyedVectors.load(path)
    except (OSError, ValueError, EOFError) as exc:
        raise StageError(path, f"cannot read word vectors ({exc})") from None
    return dict(kv.key_to_index), np.asarray(kv.vectors, np.float32)


# --- the stage ----------------------------------------------------------------------------------


def schema(dim: int, record: dict) -> dataset.SampleSchema:
    return dataset.SampleSchema(
        name="mcn_features/text_words/v1",
        doc="word2vec of each clip's caption: the first 20 known tokens, zero-padded.",
        columns=(
            *mcn_corpus.VIDEO_KEY,
            dataset.Column("clip", pa.int32(), "clip index within the video (by start time)"),
            dataset.Column("caption", pa.string(), "the caption as given"),
            dataset.Column("tokens", pa.string(), "the kept words, space-separated"),
            dataset.Column("n_words", pa.int32(), "rows of `words` that hold a word (0..20)"),
            dataset.ArrayColumn("words", "float32", (MAX_WORDS, dim), "word vectors, padded"),
        ),
        metadata=record,
    )


def prepare(params: Params) -> Context:
    if params.word2vec is not None:
        if not params.word2vec.is_file():
            raise StageError(params.word2vec, "word2vec file not found")
        return Context(
            mcn_corpus.weights_record(params.word2vec, params.seed), str(params.word2vec)
        )
    corpora = {c.name: c for c in params.corpora}
    if params.train_corpus not in corpora:
        raise StageError(
            "params.yaml: text_features.train_corpus",
            f"no corpus named {params.train_corpus!r} (have {sorted(corpora)})",
        )
    captions = mcn_corpus.read_clip_table(corpora[params.train_corpus])["caption"].tolist()
    kv = train_vectors(captions, params.seed, params.training)
    TRAINED.parent.mkdir(parents=True, exist_ok=True)
    tmp = TRAINED.with_name(f".{TRAINED.name}.{os.getpid()}.tmp")  # gensim writes to a path
    kv.save_word2vec_format(str(tmp), binary=True)
    os.replace(tmp, TRAINED)
    record = {
        "weights": f"word2vec trained on {len(captions)} captions of {params.train_corpus}, "
        f"random seed {params.seed}",
        "path": str(TRAINED),
        "sha256": file_digest(TRAINED),
        "vocabulary": len(kv),
    }
    return Context(record, str(TRAINED))


def run_shard(params: Params, context: Context, shard: Shard) -> dict:
    """Compute one shard and write it atomically, unless an identical complete one exists."""
    corpus, videos, _, clips = shard.inputs()  # captions do not depend on the video files
    code = mcn_corpus.code_digest(sys.modules[__name__])
    digest = shards.fingerprint(VERSION, code, context.record, [corpus, videos, clips])
    if shards.is_complete(ROOT, shard.key, digest):
        return {**shards.read_manifests(ROOT, [shard.key])[0], "skipped": True}
    vocab, vectors = load_vectors(context.vectors)
    rows = Rows("video", "clip", "caption", "tokens", "n_words", "words")
    failures = Failures()
    for video, video_clips in zip(shard.videos, shard.clips, strict=True):
        for clip in video_clips:
            matrix, words = caption_matrix(clip.caption, vocab, vectors)
            if not words:
                failures.add(
                    video,
                    clip.clip,
                    "warning",
                    "no_known_words",
                    f"no word of {clip.caption!r} is in the vocabulary: zeros",
                )
            rows.add(video, clip.clip, clip.caption, " ".join(words), len(words), matrix)
    words_schema = schema(vectors.shape[1], context.record)
    failures_schema = replace(mcn_corpus.FAILURES_SCHEMA, metadata=context.record)
    tables = {
        "words": (words_schema, rows.columns(corpus, words_schema)),
        "failures": (failures_schema, failures.columns(corpus, failures_schema)),
    }
    record = {
        "record": context.record,
        "captions": len(rows),
        "failures_by_kind": failures.by_kind(),
    }
    return shards.write_shard(ROOT, shard.key, digest, tables, record)


def finalize(
    params: Params, context: Context, plan: list[Shard], manifests: list[dict], seconds: float
) -> dict:
    removed = shards.remove_stale(ROOT, [s.key for s in plan])
    stats = {
        **mcn_corpus.summarise(manifests, removed),
        "record": context.record,
        "seconds": round(seconds, 2),
    }
    write_json(mcn_corpus.REPORTS / "text_features.json", stats)
    return stats


def main(params: Params) -> None:
    """word2vec (20 x 300) features of every clip caption of every corpus."""
    stats = mcn_corpus.run_local(sys.modules[__name__], params, "text_features")
    log.info("%s rows, failures %s", stats["rows"], stats["failures_by_kind"])


if __name__ == "__main__":
    run_stage("text_features", Params, main)
