"""Keras 3 worker on the TensorFlow backend: `train_on_batch`, Adam, one step per call.

  python benchmarks/bench_keras.py MODEL VARIANT

VARIANT: train_on_batch (float32) | mixed_bfloat16 (Keras' "mixed_bfloat16" dtype
policy: bf16 compute, fp32 variables; the logits layer in float32, as Keras advises) |
predict_on_batch (float32, the forward pass alone: inference mode, Keras's compiled
predict function).

Keras compiles the step into a tf.function (oneDNN kernels, no XLA: jit_compile=False,
Keras' default on CPU).
"""

from __future__ import annotations

import os
import sys
import time

T_START = time.perf_counter()
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import bench_common  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

L = keras.layers


def keras_mnist() -> keras.Model:
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        L.Conv2D(32, 3, activation="relu"), L.MaxPooling2D(2),
        L.Conv2D(64, 3, activation="relu"), L.MaxPooling2D(2),
        L.Conv2D(64, 3, activation="relu"),
        L.Flatten(), L.Dense(64, activation="relu"), L.Dense(10, dtype="float32"),
    ])  # fmt: skip


def vgg_cifar() -> keras.Model:
    mods = [keras.Input((32, 32, 3))]
    for f in (64, 128, 256):
        mods += [L.Conv2D(f, 3, padding="same", activation="relu")]
        mods += [L.Conv2D(f, 3, padding="same", activation="relu"), L.MaxPooling2D(2)]
    mods += [L.Flatten(), L.Dense(10, dtype="float32")]
    return keras.Sequential(mods)


def make_runner(model_name: str, variant: str):
    keras.utils.set_random_seed(0)
    if variant == "mixed_bfloat16":  # before the layers are made
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = {
        "keras_mnist": keras_mnist,
        "vgg_cifar": vgg_cifar,
        # keras.applications, random weights, logits out. Keras's VGG16 is torchvision's
        # and jaxcnn's network; its ResNet50 is the v1 design with convolution biases
        # (25,636,712 parameters against 25,557,032): the nearest Keras has.
        "vgg16": lambda: keras.applications.VGG16(
            weights=None, classifier_activation=None
        ),
        "resnet50": lambda: keras.applications.ResNet50(
            weights=None, classifier_activation=None
        ),
    }[model_name]()
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    h, w, c = model.input_shape[1:]
    n, b = bench_common.NUM_BATCHES, bench_common.batch_for(model_name)
    rng = np.random.default_rng(0)
    xs = [
        tf.constant(rng.uniform(size=(b, h, w, c)).astype(np.float32)) for _ in range(n)
    ]
    ys = [tf.constant(rng.integers(0, 10, b).astype(np.int32)) for _ in range(n)]
    state = {"i": 0}

    def run_calls(calls: int) -> None:
        for _ in range(calls):
            i = state["i"] % n
            if variant == "predict_on_batch":
                model.predict_on_batch(xs[i])  # returns numpy: synchronous
            else:
                model.train_on_batch(xs[i], ys[i])  # returns a float: synchronous
            state["i"] += 1

    t0 = time.perf_counter()
    run_calls(1)
    first = time.perf_counter() - t0
    info = {
        "steps_per_call": 1,
        "mode": "forward" if variant == "predict_on_batch" else "train",
        "since_start_s": time.perf_counter() - T_START,
        "params": model.count_params(),
        "precision": keras.mixed_precision.global_policy().name,
        "version": f"keras {keras.__version__}, tf {tf.__version__}",
    }
    return run_calls, b, first, info


if __name__ == "__main__":
    bench_common.serve(lambda: make_runner(sys.argv[1], sys.argv[2]))
