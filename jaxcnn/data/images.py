"""Image files and arrays: decoding with PIL, conversion to the model's input shape with TF.

`read_image` is the one image-file decoder (folder datasets and `predict` use it). It
returns gray [h, w, 1] or RGB [h, w, 3] pixels and says what it had to change:

* 16-bit images are scaled by their true maximum (1/65535) into float32 [0, 1].
* Transparency: an alpha channel that is fully opaque is dropped; an image whose color is
  uniform (drawn with alpha only) becomes a gray image of its alpha; any other image is
  composited on black.
* Files over PIL's decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`), truncated,
  corrupt or not images at all raise a `DataError` naming the file.

TensorFlow is a data engine here: it resizes and converts on the CPU and sees no GPU, so
JAX keeps the whole accelerator. It is imported lazily, on first use.
"""

from __future__ import annotations

import functools
import os
import stat
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxcnn.errors import DataError

# TF's C++ logging (oneDNN banner, CPU feature guard, cloud auth probes) is noise for our users.
# oneDNN only speeds up TF's own conv/matmul kernels, which this data engine never runs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

CONVERT_CHUNK = 4096  # images per eager TF call in convert_images (bounds peak memory)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
_SIXTEEN_BIT = (
    "I;16",
    "I;16B",
    "I;16L",
    "I;16N",
    "I",
)  # PIL opens 16-bit PNGs as these


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, tuple[str, ...]]:
    """Decodes one image file (the first frame of an animation).

    Returns:
      (pixels [h, w, 1 or 3], uint8, or float32 in [0, 1] for 16-bit images; notes on what
      was changed, empty for a plain 8-bit gray or RGB image).

    Raises:
      DataError: the file cannot be read, is not an image, is truncated or corrupt, or has
        more pixels than PIL's decompression-bomb limit.
    """
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return decode(path)


def check_regular_file(path: str | os.PathLike) -> None:
    """Raises DataError unless `path` is a regular file (or a link to one), without
    opening it: opening a FIFO waits for a writer forever, a device may never end.

    Raises:
      DataError: "PATH: ..." naming what the path is instead (or why it cannot be read).
    """
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        if os.path.islink(path):
            why = f"a symbolic link to {os.readlink(path)}, which does not exist"
        else:
            why = f"cannot read image ({e.strerror})"
        raise DataError(f"{path}: {why}") from None
    if not stat.S_ISREG(mode):
        kind = (
            "a FIFO"
            if stat.S_ISFIFO(mode)
            else "a socket"
            if stat.S_ISSOCK(mode)
            else "a device"
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a folder"
            if stat.S_ISDIR(mode)
            else "not a regular file"
        )
        raise DataError(f"{path}: {kind}, not an image file; not opened")


def decode(path: str | os.PathLike) -> tuple[np.ndarray, tuple[str, ...]]:
    """`read_image` for worker threads: the caller turns PIL's DecompressionBombWarning
    into an error (warning filters are process-wide, so threads cannot each set them)."""
    from PIL import Image

    check_regular_file(path)
    try:
        with Image.open(path) as img:
            img.load()
            return _pixels(img, path)
    except DataError:
        raise
    except Exception as e:  # PIL raises many kinds of errors for broken files
        raise DataError(f"{path}: cannot read image ({_why(e)})") from None


def _why(error: Exception) -> str:
    from PIL import Image

    if isinstance(error, Image.UnidentifiedImageError):
        return "not a PNG, JPEG, BMP, GIF or WebP image"
    if isinstance(error, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return (
            f"{error}; PIL refuses images over PIL.Image.MAX_IMAGE_PIXELS="
            f"{Image.MAX_IMAGE_PIXELS} pixels"
        )
    return f"{type(error).__name__}: {error}"


def _pixels(img, path) -> tuple[np.ndarray, tuple[str, ...]]:
    """[h, w, 1 or 3] pixels of an opened PIL image, plus notes; see the module doc."""
    mode = img.mode
    if mode in _SIXTEEN_BIT:
        pixels = np.asarray(img)
        if pixels.min() < 0 or pixels.max() > 65535:
            raise DataError(
                f"{path}: 32-bit integer image (mode {mode}) with values outside 0..65535; "
                f"save it as an 8- or 16-bit image"
            )
        scaled = (pixels.astype(np.float32) / 65535)[..., None]
        return scaled, (f"16-bit image ({mode}) scaled by 1/65535",)
    if mode == "F":
        raise DataError(f"{path}: 32-bit float images (mode F) are not supported")
    if mode in ("1", "L"):
        return np.asarray(img.convert("L"))[..., None], ()
    if mode == "P":
        mode = "RGBA" if "transparency" in img.info else "RGB"
    if mode in ("LA", "La", "PA", "RGBA", "RGBa"):
        return _flatten_alpha(
            np.asarray(img.convert("LA" if mode[0] == "L" else "RGBA"))
        )
    return np.asarray(img.convert("RGB")), ()


def _flatten_alpha(pixels: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """[h, w, c + 1] uint8 with alpha last -> [h, w, c or 1] without it, plus a note."""
    color, alpha = pixels[..., :-1], pixels[..., -1:]
    if alpha.min() == 255:
        return color, ()
    if color.min() == color.max():  # drawn with alpha alone: compositing would blank it
        return alpha, ("alpha used as the gray image (its color is uniform)",)
    composited = np.rint(color * (alpha / np.float32(255))).astype(np.uint8)
    return composited, ("transparent image composited on black",)


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


def resize_center_crop(
    image: np.ndarray, input_shape: Sequence[int], shorter: int
) -> np.ndarray:
    """torchvision's Resize(shorter) then CenterCrop(input H, W), for one image.

    The shorter side becomes `shorter` and the longer one int(shorter * long / short)
    (bilinear, antialiased when shrinking, as `convert_images`); the crop keeps the
    centre, its offsets rounded as torchvision rounds them.

    Args:
      image: [h, w, c], uint8 or float in [0, 1].
      input_shape: (H, W, C) of the model.
      shorter: the side length the shorter side is resized to; >= H and W.

    Returns:
      [H, W, C] float32 in [0, 1].

    Raises:
      DataError: `shorter` is smaller than the crop.
    """
    height, width, channels = (int(d) for d in input_shape)
    if shorter < max(height, width):
        raise DataError(
            f"cannot centre-crop {height}x{width} from an image resized to a shorter "
            f"side of {shorter}; the resize must be at least the crop"
        )
    h, w = image.shape[:2]
    if h <= w:
        size = (shorter, int(shorter * w / h))
    else:
        size = (int(shorter * h / w), shorter)
    resized, _ = convert_images(np.asarray(image)[None], (*size, channels))
    top = int(round((size[0] - height) / 2.0))
    left = int(round((size[1] - width) / 2.0))
    return resized[0, top : top + height, left : left + width]


def prepare(
    image: np.ndarray, input_shape: Sequence[int], record: Mapping[str, Any]
) -> np.ndarray:
    """One image as a run's model sees it before normalisation: [H, W, C] in [0, 1].

    `record` is config.json's dataset record: with a `resize` (an imported network's
    preprocessing, jaxcnn.interop.imagenet) the image is resized to that shorter side and
    centre-cropped; else it is resized straight to the input size, as datasets are.
    """
    if record.get("resize"):
        return resize_center_crop(image, input_shape, int(record["resize"]))
    return convert_images(np.asarray(image)[None], input_shape)[0][0]


def normalize(images: np.ndarray, record: Mapping[str, Any]) -> np.ndarray:
    """[..., C] images in [0, 1] as the run's model takes them: channels reordered when
    the record says "bgr", then (x - mean) / std with the record's statistics."""
    x = np.asarray(images, np.float32)
    if record.get("channels") == "bgr":
        x = x[..., ::-1]
    if record.get("mean") is not None:
        x = (x - np.asarray(record["mean"], np.float32)) / np.asarray(
            record["std"], np.float32
        )
    return x
