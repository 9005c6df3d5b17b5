"""Keras 3 (TensorFlow backend) twin of a jaxcnn ModelSpec, for tests/test_keras_oracle.py.

`build(spec)` writes the network a Keras user would write for the spec, with the Keras
layer classes (functional API, so residual blocks are Add + a 1x1 projection, branch
blocks Concatenate or Add), and records which Keras variable is which jaxcnn parameter
(`conv_0/kernel`, `residual_3/proj/bias`, `branches_4/b1/conv_0/kernel`,
`norm_1/scale`) and batch-norm statistic (`norm_1/mean`).
Nothing here imports jaxcnn's layers or kernels: the only conventions taken from jaxcnn
are the ones its spec documents (normalisation epsilons included).

The Keras backend must be chosen before keras is first imported: the test module sets
KERAS_BACKEND=tensorflow and imports this module after.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import keras
import numpy as np
import tensorflow as tf

from jaxcnn.spec import (
    ActivationSpec,
    BranchesSpec,
    ConvSpec,
    DenseSpec,
    DropoutSpec,
    FlattenSpec,
    GlobalPoolSpec,
    LayerSpec,
    ModelSpec,
    NormSpec,
    PoolSpec,
    ResidualSpec,
)

ACTIVATIONS = {
    "relu": keras.activations.relu,
    "relu6": keras.activations.relu6,
    # jax.nn.leaky_relu's slope; Keras's default is 0.2
    "leaky_relu": functools.partial(keras.activations.leaky_relu, negative_slope=0.01),
    "elu": keras.activations.elu,
    # jaxcnn's gelu is the exact erf form
    "gelu": functools.partial(keras.activations.gelu, approximate=False),
    "silu": keras.activations.silu,
    "tanh": keras.activations.tanh,
    "sigmoid": keras.activations.sigmoid,
    "softplus": keras.activations.softplus,
    "identity": keras.activations.linear,
}


@dataclasses.dataclass
class Twin:
    """A Keras model and its variables by jaxcnn path.

    Attributes:
      model: maps [batch, H, W, C] to logits [batch, num_classes].
      params: trainable variables, {"conv_0/kernel": variable, ...}.
      stats: batch-norm moving statistics, {"norm_1/mean": variable, ...}.
      dtype: what the model computes in ("float64", "float32").
    """

    model: keras.Model
    params: dict[str, keras.Variable]
    stats: dict[str, keras.Variable]
    dtype: str

    def load(self, values: dict[str, np.ndarray]) -> None:
        """Copies jaxcnn's parameters and statistics in, by path; shapes must agree."""
        variables = {**self.params, **self.stats}
        assert set(values) == set(variables), (
            f"paths differ: jaxcnn only {sorted(set(values) - set(variables))}, "
            f"Keras only {sorted(set(variables) - set(values))}"
        )
        for path, value in values.items():
            shape = tuple(variables[path].shape)
            assert shape == value.shape, f"{path}: Keras {shape}, jaxcnn {value.shape}"
            variables[path].assign(value.astype(self.dtype))

    def run(self, images: np.ndarray, labels: np.ndarray, training: bool):
        """Logits, gradients of the mean softmax cross-entropy, and the statistics,
        all in the twin's dtype.

        With `training`, batch norm uses batch statistics and updates its moving ones
        (returned after the update) and dropout is active.
        """
        names = sorted(self.params)
        with tf.GradientTape() as tape:
            logits = self.model(images.astype(self.dtype), training=training)
            loss = keras.ops.mean(
                keras.losses.sparse_categorical_crossentropy(
                    labels, logits, from_logits=True
                )
            )
        grads = tape.gradient(loss, [self.params[n] for n in names])
        return (
            np.asarray(logits),
            {n: np.asarray(g) for n, g in zip(names, grads, strict=True)},
            {n: np.asarray(v) for n, v in self.stats.items()},
        )


def build(spec: ModelSpec, dtype: str = "float64") -> Twin:
    """The Keras model of `spec` computing in `dtype`; weights still Keras's own.

    float64 by default: a reference whose own rounding is negligible next to float32's
    (TensorFlow's float32 batch statistics are less accurate than XLA's).
    """
    params: dict[str, keras.Variable] = {}
    stats: dict[str, keras.Variable] = {}
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(dtype)  # every layer built below computes in dtype
    try:
        inputs = keras.Input(shape=spec.input_shape, dtype=dtype)
        outputs = _sequence(spec.layers, inputs, "", params, stats)
    finally:
        keras.config.set_dtype_policy(policy)
    return Twin(keras.Model(inputs, outputs), params, stats, dtype)


def _sequence(layers: tuple[LayerSpec, ...], x, prefix: str, params, stats):
    for i, layer in enumerate(layers):
        x = _layer(layer, x, f"{prefix}{layer.type}_{i}", params, stats)
    return x


def _conv(spec: ConvSpec, x, name: str, params):
    padding = spec.padding
    if isinstance(padding, tuple):  # Keras convs pad "valid" or "same" only
        if isinstance(padding[0], tuple):  # ((top, bottom), (left, right))
            x = keras.layers.ZeroPadding2D(padding)(x)
        else:
            ph, pw = padding
            x = keras.layers.ZeroPadding2D(((ph, ph), (pw, pw)))(x)
        padding = "valid"
    conv = keras.layers.Conv2D(
        spec.filters,
        spec.kernel,
        strides=spec.stride,
        padding=padding,
        dilation_rate=spec.dilation,
        groups=spec.groups,
        activation=ACTIVATIONS[spec.activation],
        use_bias=spec.use_bias,
    )
    return _register(conv, x, name, params)


def _register(layer, x, name: str, params: dict):
    """Calls a Keras conv or dense layer on x and records its weights under jaxcnn's
    parameter paths (name/kernel, name/bias when it has one)."""
    y = layer(x)
    params[f"{name}/kernel"] = layer.kernel
    if layer.use_bias:
        params[f"{name}/bias"] = layer.bias
    return y


def _pool(spec: PoolSpec, x):
    if spec.count_padding:  # Keras's average pooling leaves padding out
        raise NotImplementedError("Keras has no average pooling that counts padding")
    if spec.pool not in ("max", "avg") or not isinstance(spec.padding, str):
        raise NotImplementedError(
            f"Keras has no {spec.pool} pooling with padding {spec.padding!r}"
        )
    cls = (
        keras.layers.MaxPooling2D
        if spec.pool == "max"
        else keras.layers.AveragePooling2D
    )
    return cls(pool_size=spec.window, strides=spec.stride, padding=spec.padding)(x)


def _norm(spec: NormSpec, x, name: str, params, stats):
    if spec.norm == "batch":
        norm = keras.layers.BatchNormalization(
            momentum=spec.momentum, epsilon=spec.epsilon
        )
    elif spec.norm == "layer":
        norm = keras.layers.LayerNormalization(epsilon=spec.epsilon)
    else:
        norm = keras.layers.GroupNormalization(groups=spec.groups, epsilon=spec.epsilon)
    y = norm(x)
    params[f"{name}/scale"] = norm.gamma
    params[f"{name}/bias"] = norm.beta
    if spec.norm == "batch":
        stats[f"{name}/mean"] = norm.moving_mean
        stats[f"{name}/var"] = norm.moving_variance
    return y


def _residual(spec: ResidualSpec, x, name: str, params, stats):
    """activation(body(x) + skip(x)); the skip is a 1x1 conv when the shape changes."""
    y = _sequence(spec.layers, x, f"{name}/", params, stats)
    skip = x
    if tuple(x.shape) != tuple(y.shape):
        # The stride that takes the input size to the body's output size.
        strides = tuple(math.ceil(x.shape[a] / y.shape[a]) for a in (1, 2))
        proj = keras.layers.Conv2D(
            y.shape[-1],
            1,
            strides=strides,
            padding="valid",
            use_bias=not spec.projection_norm,
        )
        skip = _register(proj, x, f"{name}/proj", params)
        if spec.projection_norm:  # a batch norm with jaxcnn's defaults
            skip = _norm(NormSpec(), skip, f"{name}/proj_norm", params, stats)
    added = keras.layers.Add()([y, skip])
    return keras.layers.Activation(ACTIVATIONS[spec.activation])(added)


def _branches(spec: BranchesSpec, x, name: str, params, stats):
    """activation(join(branches)); an empty branch passes x on."""
    outs = [
        _sequence(branch, x, f"{name}/b{b}/", params, stats)
        for b, branch in enumerate(spec.branches)
    ]
    join = keras.layers.Concatenate() if spec.join == "concat" else keras.layers.Add()
    return keras.layers.Activation(ACTIVATIONS[spec.activation])(join(outs))


def _layer(spec: LayerSpec, x, name: str, params, stats):
    if isinstance(spec, ConvSpec):
        return _conv(spec, x, name, params)
    if isinstance(spec, PoolSpec):
        return _pool(spec, x)
    if isinstance(spec, GlobalPoolSpec):
        cls = (
            keras.layers.GlobalMaxPooling2D
            if spec.pool == "max"
            else keras.layers.GlobalAveragePooling2D
        )
        return cls()(x)
    if isinstance(spec, FlattenSpec):
        return keras.layers.Flatten()(x)
    if isinstance(spec, DenseSpec):
        dense = keras.layers.Dense(
            spec.units,
            activation=ACTIVATIONS[spec.activation],
            use_bias=spec.use_bias,
        )
        return _register(dense, x, name, params)
    if isinstance(spec, NormSpec):
        return _norm(spec, x, name, params, stats)
    if isinstance(spec, DropoutSpec):
        return keras.layers.Dropout(spec.rate)(x)
    if isinstance(spec, ActivationSpec):
        return keras.layers.Activation(ACTIVATIONS[spec.activation])(x)
    if isinstance(spec, ResidualSpec):
        return _residual(spec, x, name, params, stats)
    if isinstance(spec, BranchesSpec):
        return _branches(spec, x, name, params, stats)
    raise NotImplementedError(f"no Keras twin for {type(spec).__name__}")
