"""The IDX reader accepts the official MNIST layout and names the file for every kind of damage."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from stages.common.errors import StageError
from stages.motionmnist.idx import read_idx, read_mnist


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture
def mnist_pair(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([7, 2, 1, 0, 4], np.uint8)  # the first five MNIST test labels
    (tmp_path / "images.gz").write_bytes(gzip.compress(idx_bytes(images)))
    (tmp_path / "labels").write_bytes(idx_bytes(labels))
    return tmp_path / "images.gz", tmp_path / "labels", images, labels


def test_reads_gzipped_and_plain_files(mnist_pair):
    images_path, labels_path, images, labels = mnist_pair
    got_images, got_labels = read_mnist(images_path, labels_path)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


def test_magic_number_matches_the_official_files(mnist_pair):
    images_path, labels_path, *_ = mnist_pair
    assert struct.unpack(">I", gzip.decompress(images_path.read_bytes())[:4])[0] == 2051
    assert struct.unpack(">I", labels_path.read_bytes()[:4])[0] == 2049


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[:-10], "truncated or wrong file"),
        (lambda b: b[:6], "truncated header"),
        (lambda b: b"\x01\x02" + b[2:], "bad magic number"),
        (lambda b: b[:2] + b"\x0d" + b[3:], "expected unsigned bytes"),
        (lambda b: b + b"\x00", "truncated or wrong file"),
    ],
)
def test_damaged_file_is_rejected_naming_it(tmp_path, damage, message):
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(damage(idx_bytes(np.zeros((3, 28, 28), np.uint8))))
    with pytest.raises(StageError, match=message) as err:
        read_idx(path, ndim=3)
    assert err.value.where == str(path)


def test_labels_file_given_as_images_is_rejected(mnist_pair):
    _, labels_path, *_ = mnist_pair
    with pytest.raises(StageError, match="in 1 dimensions"):
        read_mnist(labels_path, labels_path)


def test_count_mismatch_and_missing_and_corrupt_gzip(tmp_path, mnist_pair):
    images_path, _, *_ = mnist_pair
    short = tmp_path / "short-labels"
    short.write_bytes(idx_bytes(np.array([1, 2], np.uint8)))
    with pytest.raises(StageError, match="2 labels for 5 images"):
        read_mnist(images_path, short)
    with pytest.raises(StageError, match="IDX file not found"):
        read_idx(tmp_path / "missing", ndim=1)
    broken = tmp_path / "broken.gz"
    broken.write_bytes(images_path.read_bytes()[:40])
    with pytest.raises(StageError, match="cannot decompress"):
        read_idx(broken, ndim=3)
