"""Images as arrays: conversion to the model's input shape (TensorFlow ops on the CPU).

TensorFlow is a data engine here: it resizes and converts on the CPU and sees no GPU, so
JAX keeps the whole accelerator. It is imported lazily, on first use.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import numpy as np

from jaxcnn.errors import DataError

# TF's C++ logging (oneDNN banner, CPU feature guard, cloud auth probes) is noise for our users.
# oneDNN only speeds up TF's own conv/matmul kernels, which this data engine never runs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

CONVERT_CHUNK = 4096  # images per eager TF call in convert_images (bounds peak memory)


def convert_images(
    images: np.ndarray, input_shape: Sequence[int]
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Scales to [0, 1], converts channels and resizes to input_shape.

    Used for dataset splits and for `predict` on user images.

    Args:
      images: [n, h, w, c]; uint8 (0..255) or float (already in [0, 1]). c in 1..4
        (grayscale, grayscale+alpha, RGB, RGBA).
      input_shape: (H, W, C) wanted; C in {1, 3} unless it equals c.

    Returns:
      (images [n, H, W, C] float32, notes describing the conversions applied).

    Raises:
      DataError: images are not 4-D or the channel conversion is impossible.
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise DataError(
            f"images must be [n, height, width, channels], got shape {images.shape}"
        )
    target = tuple(int(d) for d in input_shape)
    notes = conversion_notes(tuple(images.shape[1:]), target)
    if images.dtype == np.uint8:
        scale = np.float32(1 / 255)
    else:
        scale = np.float32(1)
    if not notes:
        return images.astype(np.float32) * scale, notes
    tf = tensorflow()
    out = np.empty((images.shape[0], *target), np.float32)
    # grayscale->RGB: TF makes one channel, numpy broadcasts it into all three
    expand = target[-1] == 3 and images.shape[-1] in (1, 2)
    tf_target = (*target[:2], 1) if expand else target
    for start in range(0, images.shape[0], CONVERT_CHUNK):
        chunk = images[start : start + CONVERT_CHUNK].astype(np.float32) * scale
        converted = convert_tf(tf.constant(chunk), tf_target)
        out[start : start + CONVERT_CHUNK] = np.asarray(converted)
    return out, notes


@functools.cache
def tensorflow():
    """Imports TensorFlow with every GPU hidden from it, so it takes no accelerator memory."""
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # devices already initialised by someone else's TF use
        pass
    return tf


def conversion_notes(
    source: tuple[int, ...], target: tuple[int, ...]
) -> tuple[str, ...]:
    """Describes converting images of shape source (h, w, c) to target (H, W, C)."""
    if len(target) != 3 or min(target) < 1:
        raise DataError(
            f"input shape must be (height, width, channels) >= 1, got {target}"
        )
    (h, w, c), (height, width, channels) = source, target
    notes = []
    if c != channels:
        if c not in (1, 2, 3, 4) or channels not in (1, 3):
            raise DataError(
                f"cannot convert images of shape {source} to the model's input shape {target}: "
                f"only grayscale (1), grayscale+alpha (2), RGB (3) and RGBA (4) images convert "
                f"to 1 or 3 channels"
            )
        if c in (2, 4):
            notes.append("dropped the alpha channel")
        gray = c in (1, 2)
        if gray and channels == 3:
            notes.append("grayscale->RGB")
        elif not gray and channels == 1:
            notes.append("RGB->grayscale (luminance)")
    if (h, w) != (height, width):
        notes.append(f"resized {h}x{w} -> {height}x{width} (bilinear)")
    return tuple(notes)


def convert_tf(images, target: tuple[int, int, int]):
    """TF ops: [n, h, w, c] float32 in [0, 1] -> [n, H, W, C]; see _conversion_notes."""
    tf = tensorflow()
    height, width, channels = target
    c = images.shape[-1]
    if c != channels:
        images = images[..., : 1 if c in (1, 2) else 3]  # drop alpha
        if images.shape[-1] == 3 and channels == 1:  # before resizing: less to resize
            images = tf.image.rgb_to_grayscale(images)
    h, w = images.shape[1:3]
    if (h, w) != (height, width):
        # Antialiasing only matters when shrinking, and is far slower when enlarging.
        shrink = height < h or width < w
        images = tf.image.resize(
            images, (height, width), method="bilinear", antialias=shrink
        )
    if images.shape[-1] == 1 and channels == 3:  # after resizing: less to resize
        images = tf.image.grayscale_to_rgb(images)
    return images
