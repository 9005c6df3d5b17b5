"""The raw MNIST test files in ../shared/data/mnist, read without TFDS (tests only)."""

import gzip
import struct

import numpy as np

from jaxcnn.data.catalog import shared_data_dir

SHARED_DATA = shared_data_dir()


def read_mnist(n: int):
    """The first `n` MNIST test images, [n, 28, 28, 1] in [0, 1], and their labels;
    None when the raw files are not there."""
    folder = SHARED_DATA / "mnist"
    images_path = folder / "t10k-images-idx3-ubyte.gz"
    labels_path = folder / "t10k-labels-idx1-ubyte.gz"
    if not (images_path.is_file() and labels_path.is_file()):
        return None
    with gzip.open(images_path) as f:
        magic, _, rows, cols = struct.unpack(">4i", f.read(16))
        assert magic == 2051, f"{images_path} is no idx3 image file"
        pixels = np.frombuffer(f.read(n * rows * cols), np.uint8)
    with gzip.open(labels_path) as f:
        magic, _ = struct.unpack(">2i", f.read(8))
        assert magic == 2049, f"{labels_path} is no idx1 label file"
        labels = np.frombuffer(f.read(n), np.uint8)
    images = pixels.reshape(n, rows, cols, 1).astype(np.float32) / 255
    return images, labels.astype(np.int32)
