"""ImageNet (ILSVRC-2012) class names and each source framework's input preprocessing.

The class names are torchvision's (`imagenet_classes.txt`, one per line, in class-id
order). Preprocessing is what an imported run's config.json records for `predict`:
images in [0, 1] are resized so their shorter side is `resize` (None: straight to the
input size), centre-cropped to the input size, put in `channels` order and normalised
as (x - mean) / std per channel.
"""

from __future__ import annotations

import functools
import importlib.resources
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Keras's VGG16 and ResNet50 ("caffe" mode): BGR, 0..255 minus the BGR means, no
# scaling; the same as (x - mean / 255) / (1 / 255) on [0, 1] images.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

PREPROCESSING: dict[str, dict[str, Any]] = {
    # torchvision's ImageClassification transform: resize 256 (bilinear), crop 224
    "torchvision": {
        "resize": 256,
        "channels": "rgb",
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
    },
    # timm's VGG weights are torchvision's (vgg16.tv_in1k): the same transform
    "timm": {
        "resize": 256,
        "channels": "rgb",
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
    },
    # keras.applications.vgg16.preprocess_input and resnet50.preprocess_input ("caffe"
    # mode), after a plain resize
    "keras": {
        "resize": None,
        "channels": "bgr",
        "mean": [m / 255 for m in _CAFFE_MEAN_BGR],
        "std": [1 / 255] * 3,
    },
}


# torchvision's published GoogLeNet and Inception v3 were trained on input normalised
# with mean 0.5 and std 0.5; built with those weights they take ImageNet-normalised
# input and convert it first (`transform_input=True`). The presets have no such step,
# so an imported run records the normalisation the weights were trained with.
_HALF = {"mean": [0.5] * 3, "std": [0.5] * 3}
_KERAS_TORCH_MODE = {
    "resize": None,
    "channels": "rgb",
    "mean": list(IMAGENET_MEAN),
    "std": list(IMAGENET_STD),
}
# keras.applications.inception_v3 and mobilenet_v2.preprocess_input ("tf" mode): x / 127.5 - 1 on 0..255
# RGB, i.e. mean and std 0.5 on [0, 1] images, after a plain resize
_KERAS_TF_MODE = {"resize": None, "channels": "rgb", **_HALF}
_BY_ARCH: dict[tuple[str, str], dict[str, Any]] = {
    ("googlenet", "torchvision"): _HALF,
    # torchvision's Inception_V3_Weights transform: resize 342, crop 299
    ("inception_v3", "torchvision"): {**_HALF, "resize": 342},
    # timm's ResNet weights (resnet*.a1_in1k): crop_pct 0.95, so a shorter side of
    # floor(224 / 0.95); timm resizes bicubically, predict bilinearly
    ("resnet18", "timm"): {"resize": 235},
    ("resnet34", "timm"): {"resize": 235},
    ("resnet50", "timm"): {"resize": 235},
    # timm's inception_v3.tv_in1k: torchvision's weights, mean and std 0.5, crop_pct
    # 0.875 of 299 (a shorter side of 341); its DenseNets and MobileNet v2 take the
    # default timm transform (crop_pct 0.875 of 224: 256)
    ("inception_v3", "timm"): {**_HALF, "resize": 341},
    # keras.applications.densenet.preprocess_input ("torch" mode) after a plain resize
    ("densenet121", "keras"): _KERAS_TORCH_MODE,
    ("densenet201", "keras"): _KERAS_TORCH_MODE,
    ("inception_v3", "keras"): _KERAS_TF_MODE,
    ("mobilenet_v2", "keras"): _KERAS_TF_MODE,
}


def preprocessing(arch: str, source: str) -> dict[str, Any]:
    """How `predict` prepares an image for `arch`'s weights from `source`."""
    return {**PREPROCESSING[source], **_BY_ARCH.get((arch, source), {})}


@functools.cache
def class_names() -> tuple[str, ...]:
    """The 1000 ImageNet class names, by class id ("tench", "goldfish", ...)."""
    text = (
        importlib.resources.files("jaxcnn.interop")
        .joinpath("imagenet_classes.txt")
        .read_text(encoding="utf-8")
    )
    return tuple(text.splitlines())
