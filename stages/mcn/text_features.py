"""word2vec features of clip captions: (20, 300) per caption, as the MCN/HowTo100M code builds them.

Tokens: regex `[\\w']+`, case kept; words not in the vocabulary dropped; the first 20 kept words,
zero-padded. A caption with no known word gets zeros and a warning row in the failures table
(the documented fallback; MCN's loader does the same silently).

Vectors: the word2vec file `word2vec` in params, binary (`.bin`, `.bin.gz`: GoogleNews' format,
and the `word2vec` stage's) or text (`.txt`, `.vec`), recorded by path and sha256. gensim's pickled
`.save` files are refused: loading one can run code.
"""

from __future__ import annotations

import functools
import logging
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from stages.common import dataset
from stages.common.cli import run_stage
from stages.common.closure import code_digest
from stages.common.errors import StageError
from stages.common.hashing import file_digest
from stages.mcn import corpus as mcn_corpus
from stages.mcn import shards
from stages.mcn.corpus import Corpus, Failures, Rows, Shard, tokenize

log = logging.getLogger(__name__)

VERSION = "text_features/v1"
MAX_WORDS = 20
BINARY, TEXT = (".bin", ".bin.gz"), (".txt", ".txt.gz", ".vec")  # word2vec's two formats


@dataclass(frozen=True)
class Params:
    source: Path  # the folder holding every clip table of `corpora` (a DVC dependency)
    corpora: tuple[Corpus, ...]
    word2vec: Path  # word2vec-format vectors: the word2vec stage's, or GoogleNews' .bin
    videos_per_shard: int
    out: Path
    metrics: Path
    stats: Path


class Context(NamedTuple):
    record: dict[str, Any]
    vectors: str  # path of the word2vec file every shard reads


# --- pure functions -------------------------------------------------------------------------------


def caption_matrix(
    caption: str, vocab: dict[str, int], vectors: np.ndarray
) -> tuple[np.ndarray, list[str]]:
    """(20, dim) float32: vectors of the first 20 in-vocabulary tokens, zero-padded; the words."""
    words = [w for w in tokenize(caption) if w in vocab][:MAX_WORDS]
    out = np.zeros((MAX_WORDS, vectors.shape[1]), np.float32)
    if words:
        out[: len(words)] = vectors[[vocab[w] for w in words]]
    return out, words


@functools.lru_cache(maxsize=1)
def load_vectors(path: str) -> tuple[dict[str, int], np.ndarray]:
    from gensim.models import KeyedVectors

    try:
        kv = KeyedVectors.load_word2vec_format(path, binary=path.endswith(BINARY))
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
    mcn_corpus.check_source(params.source, params.corpora, "text_features", {})
    if not params.word2vec.name.endswith(BINARY + TEXT):
        raise StageError(params.word2vec, f"expected word2vec vectors: {', '.join(BINARY + TEXT)}")
    if not params.word2vec.is_file():
        raise StageError(params.word2vec, "word2vec file not found (`dvc repro word2vec` makes it)")
    record = {"weights": str(params.word2vec), "sha256": file_digest(params.word2vec)}
    return Context(record, str(params.word2vec))


def run_shard(params: Params, context: Context, shard: Shard) -> dict:
    """Compute one shard and write it atomically, unless an identical complete one exists."""
    corpus = shard.corpus.name
    code = code_digest("stages.mcn.text_features")
    # shard.inputs() only: captions do not depend on the video files
    digest = shards.fingerprint(VERSION, code, context.record, shard.inputs())
    if shards.is_complete(params.out, shard.key, digest):
        return {**shards.read_manifests(params.out, [shard.key])[0], "skipped": True}
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
    return shards.write_shard(params.out, shard.key, digest, tables, record)


def finalize(params: Params, context: Context, manifests: list[dict], seconds: float) -> dict:
    """Remove what this run's shards do not list, write metrics and stats; the run's record."""
    summary = mcn_corpus.summarise(manifests)
    rows = summary["rows"]
    metrics = {"captions": rows.get("words", 0), "failures": rows.get("failures", 0)}
    run = mcn_corpus.finish(params, manifests, metrics, {**summary, "record": context.record})
    return {**summary, **run, "shard_seconds": round(seconds, 2)}


def main(params: Params) -> dict:
    """word2vec (20 x 300) features of every clip caption of every corpus."""
    run = mcn_corpus.run_local(sys.modules[__name__], params, "text_features")
    log.info("%s rows, failures %s", run["rows"], run["failures_by_kind"])
    return run


if __name__ == "__main__":
    run_stage("text_features", Params, main)
