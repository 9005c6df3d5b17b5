"""Trained models out of jaxcnn: StableHLO (`jax.export`) and ONNX files for serving.

Both formats hold the network in eval mode (dropout off, batch norm on its running
statistics), computing in float32 with the XLA kernels, the weights baked in, and a
symbolic batch size. The input is the preprocessing contract `contract` describes:
[batch, H, W, C] float32 images in [0, 1]; a run trained on standardised data has its
normalisation inside the exported graph, so callers never apply it. The output is
float32 logits [batch, num_classes] (softmax them for probabilities).

- StableHLO: `jax.export`'s serialised form; `jax.export.deserialize(data).call(x)`
  runs it with JAX alone (jaxcnn need not be installed). jax.export has no field for
  user metadata, so the contract goes to a sidecar JSON file, `FILE.json`.
- ONNX: written from the model's layers with the `onnx` package (one ONNX operator,
  or a few, per layer kind; the layout is turned NCHW once at the input); the contract
  is in the model's `metadata_props` (key "jaxcnn", JSON; class names and the input
  contract also under their own keys). `onnxruntime` runs it.

Usage::

    jaxcnn export --workdir runs/digits --format onnx -o digits.onnx
    export.export_run("runs/digits", "stablehlo", "digits.stablehlo")

The `onnx` package is an optional extra (`pip install 'jaxcnn[export]'`), imported only
when ONNX is asked for.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import types
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxcnn import layers, models, rundir, shapes, transfer
from jaxcnn.errors import JaxcnnError
from jaxcnn.spec import LayerSpec, ModelSpec

if TYPE_CHECKING:
    import onnx

Format = Literal["stablehlo", "onnx"]
FORMATS: tuple[str, ...] = ("stablehlo", "onnx")
SUFFIXES = {"stablehlo": ".stablehlo", "onnx": ".onnx"}
ONNX_OPSET = 17  # LayerNormalization's first opset; onnxruntime >= 1.14 runs it
# StableHLO is lowered for these platforms, so one file serves CPU and NVIDIA GPUs
STABLEHLO_PLATFORMS = ("cpu", "cuda")
INPUT_NAME, OUTPUT_NAME = "images", "logits"


class ExportError(JaxcnnError):
    """A model or run that cannot be exported as asked (the CLI exits 2)."""


# --------------------------------------------------------------------------- contract
def contract(
    spec: ModelSpec,
    dataset: dict[str, Any] | None = None,
    *,
    source: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The preprocessing contract and labels an exported model carries.

    Args:
      spec: the model's spec (input shape, classes).
      dataset: the run's dataset record (config.json "dataset": class names, mean/std);
        None: classes are named "0", "1", ... and there is no normalisation.
      source: where the weights came from (workdir, checkpoint step), recorded as is.

    Returns:
      A JSON-ready dict: `input` (name, shape with "batch" first, layout, dtype,
      value range, `normalization` applied inside the model or None, how other image
      sizes are brought to the input), `output` (name, shape, meaning), `class_names`,
      `model`, `dataset`, `source`, `jaxcnn_version`.
    """
    from jaxcnn import __version__

    dataset = dataset or {}
    names = dataset.get("class_names") or [str(i) for i in range(spec.num_classes)]
    if len(names) != spec.num_classes:
        raise ExportError(
            f"the run's dataset record names {len(names)} classes but model "
            f"{spec.name!r} has {spec.num_classes} outputs"
        )
    mean, std = dataset.get("mean"), dataset.get("std")
    norm = None
    if mean is not None and std is not None:
        norm = {
            "mean": [float(v) for v in np.ravel(mean)],
            "std": [float(v) for v in np.ravel(std)],
            "applied": "inside the model: (images - mean) / std per channel",
        }
    height, width, channels = spec.input_shape
    return {
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", height, width, channels],
            "layout": "NHWC",
            "dtype": "float32",
            "range": [0.0, 1.0],
            "scaling": "uint8 pixels divided by 255",
            "resize": (
                f"other sizes are resized to {height}x{width} (bilinear, as jaxcnn "
                f"predict does) and converted to {channels} channel(s)"
            ),
            "normalization": norm,
        },
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["batch", spec.num_classes],
            "dtype": "float32",
            "meaning": "logits; softmax over the last axis gives class probabilities",
        },
        "class_names": [str(n) for n in names],
        "model": spec.name,
        "dataset": dataset.get("name"),
        "eval_mode": True,
        "source": source or {},
        "jaxcnn_version": __version__,
    }


# --------------------------------------------------------------------------- runs
def export_run(
    workdir: str | os.PathLike,
    format: Format,
    output: str | os.PathLike | None = None,
    *,
    which: str | int = "best",
) -> list[pathlib.Path]:
    """Exports a finished run's checkpoint to a StableHLO or ONNX file.

    Reads the run directory only (nothing is written there).

    Args:
      workdir: a `jaxcnn train` run directory.
      format: "stablehlo" or "onnx".
      output: the file to write; default `<workdir name>.stablehlo` / `.onnx` in the
        current directory. StableHLO also writes the contract to `output + ".json"`.
      which: the checkpoint: "best", "latest" or a step.

    Returns:
      The files written (the model first).

    Raises:
      ExportError: an unknown format, or a layer kind the format cannot hold.
      CheckpointError: not a run directory, no usable checkpoint.
    """
    if format not in FORMATS:
        raise ExportError(
            f"export format must be one of {', '.join(FORMATS)}; got {format!r}"
        )
    saved = rundir.RunDir(workdir).read()
    name = pathlib.Path(workdir).resolve().name or "model"
    path = pathlib.Path(output or f"{name}{SUFFIXES[format]}")
    _check_output(path)
    if format == "onnx":
        check_exportable(saved.spec, "onnx")
        _onnx()  # a missing extra is reported before the checkpoint is read
    run = transfer.restore(workdir, which, precision="float32")
    source = {
        "workdir": str(pathlib.Path(workdir).resolve()),
        "checkpoint_step": run.step,
        "epoch": run.epoch,
    }
    meta = contract(run.spec, run.dataset, source=source)
    if format == "onnx":
        rundir.write_bytes_atomic(path, onnx_model(run.model, meta).SerializeToString())
        return [path]
    exported = stablehlo(run.model, meta)
    rundir.write_bytes_atomic(path, exported.serialize())
    sidecar = pathlib.Path(f"{path}.json")
    rundir.write_text_atomic(sidecar, json.dumps(meta, indent=2) + "\n")
    return [path, sidecar]


def _check_output(path: pathlib.Path) -> None:
    if path.is_dir():
        raise ExportError(f"output {path} is a directory; name the file to write")
    if not path.parent.is_dir():
        raise ExportError(
            f"output {path}: the folder {path.parent} does not exist; create it first"
        )


def _normalized(model: nnx.Module, meta: dict) -> Callable[[jax.Array], jax.Array]:
    """images in [0, 1] -> logits, normalising first as the contract says."""
    norm = meta["input"]["normalization"]
    graphdef, state = nnx.split(model)
    per_channel = (1, 1, 1, -1)  # broadcast over [batch, H, W, C] explicitly
    mean = None if norm is None else np.float32(norm["mean"]).reshape(per_channel)
    std = None if norm is None else np.float32(norm["std"]).reshape(per_channel)

    def logits(images: jax.Array) -> jax.Array:
        x = images if mean is None else (images - mean) / std
        return nnx.merge(graphdef, state)(x)

    return logits


def _eval_float32(model: nnx.Module) -> nnx.Module:
    """A copy of `model` in eval mode with XLA kernels in float32 (the export form)."""
    if not isinstance(model, layers.CNN) or model.upto is not None:
        raise ExportError(
            "export takes a whole model from build_model (not a backbone built with "
            f"upto=), got {type(model).__name__}"
        )
    copy = nnx.clone(model)
    models.set_kernels(copy, "xla", precision="float32")
    copy.eval()
    return copy


# --------------------------------------------------------------------------- StableHLO
def stablehlo(
    model: nnx.Module,
    meta: dict[str, Any] | None = None,
    *,
    platforms: Sequence[str] = STABLEHLO_PLATFORMS,
) -> jax.export.Exported:
    """The model as a `jax.export.Exported`: images [b, H, W, C] -> logits, b symbolic.

    Args:
      model: a model from `build_model` (exported in eval mode, float32, XLA kernels;
        the model itself is left as it was).
      meta: the contract (`contract`); None: `contract(model.spec)`.
      platforms: the platforms the StableHLO is lowered for.

    Returns:
      The Exported; `.serialize()` gives the bytes `jax.export.deserialize` reads.
    """
    model = _eval_float32(model)
    meta = contract(model.spec) if meta is None else meta
    (batch,) = jax.export.symbolic_shape("batch")
    images = jax.ShapeDtypeStruct((batch, *model.spec.input_shape), jnp.float32)
    fn = jax.jit(_normalized(model, meta))
    return jax.export.export(fn, platforms=tuple(platforms))(images)


# --------------------------------------------------------------------------- ONNX
# layer kind -> writer; a kind missing here is refused by name (check_exportable)
_ONNX_WRITERS: dict[str, Callable] = {}


def check_exportable(spec: ModelSpec, format: Format) -> None:
    """Raises ExportError naming every layer whose kind `format` cannot hold."""
    if format == "stablehlo":
        return  # jax.export lowers whatever JAX runs
    refused = [
        (name, layer.type)
        for name, layer in _walk(spec.layers, "")
        if layer.type not in _ONNX_WRITERS
    ]
    if refused:
        listed = ", ".join(f"{name} ({kind})" for name, kind in refused)
        raise ExportError(
            f"model {spec.name!r} cannot be exported to ONNX: no ONNX form for layer "
            f"kind {refused[0][1]!r} ({listed}); ONNX export covers "
            f"{', '.join(sorted(_ONNX_WRITERS))}. Export --format stablehlo instead, "
            "which holds every layer kind"
        )


def _walk(specs: Sequence[LayerSpec], prefix: str):
    for i, layer in enumerate(specs):
        name = f"{prefix}{layer.type}_{i}"
        yield name, layer
        inner = getattr(layer, "layers", None)
        if inner:
            yield from _walk(inner, name + "/")


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ExportError(
            "ONNX export needs the onnx package: pip install 'jaxcnn[export]' "
            "(onnx, and onnxruntime to run the file)"
        ) from None
    return onnx


def onnx_model(
    model: nnx.Module, meta: dict[str, Any] | None = None
) -> onnx.ModelProto:
    """The model as an ONNX graph: input "images" [batch, H, W, C] float32 -> "logits".

    Args:
      model: a model from `build_model` (its eval-mode function is written: dropout
        off, batch norm on the running statistics; the model is left as it was).
      meta: the contract (`contract`), stored in `metadata_props`; None:
        `contract(model.spec)`.

    Raises:
      ExportError: a layer kind with no ONNX form (named), or onnx not installed.
    """
    onnx = _onnx()
    from onnx import TensorProto, helper

    model = _eval_float32(model)
    spec = model.spec
    check_exportable(spec, "onnx")
    meta = contract(spec) if meta is None else meta
    graph = _Graph(onnx)
    summary = shapes.infer(spec)
    x = INPUT_NAME
    norm = meta["input"]["normalization"]
    if norm is not None:
        x = graph.op("Sub", x, graph.const(np.asarray(norm["mean"], np.float32)))
        x = graph.op("Div", x, graph.const(np.asarray(norm["std"], np.float32)))
    x = graph.op("Transpose", x, perm=[0, 3, 1, 2])  # NCHW from here on
    x = _sequence(graph, model, x, summary, "")
    graph.op("Identity", x, out=OUTPUT_NAME)
    height, width, channels = spec.input_shape
    inputs = [
        helper.make_tensor_value_info(
            INPUT_NAME, TensorProto.FLOAT, ["batch", height, width, channels]
        )
    ]
    outputs = [
        helper.make_tensor_value_info(
            OUTPUT_NAME, TensorProto.FLOAT, ["batch", spec.num_classes]
        )
    ]
    proto = helper.make_model(
        helper.make_graph(
            graph.nodes, spec.name, inputs, outputs, initializer=graph.initializers
        ),
        opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
        producer_name="jaxcnn",
        producer_version=meta["jaxcnn_version"],
        doc_string=(
            f"{spec.name}: {meta['input']['shape']} float32 NHWC images in [0, 1] -> "
            f"logits over {len(meta['class_names'])} classes"
        ),
    )
    proto.ir_version = min(proto.ir_version, 10)  # onnxruntime >= 1.20 reads IR 10
    helper.set_model_props(
        proto,
        {
            "jaxcnn": json.dumps(meta),
            "class_names": json.dumps(meta["class_names"]),
            "input_shape": json.dumps(meta["input"]["shape"]),
            "input_dtype": meta["input"]["dtype"],
            "input_range": json.dumps(meta["input"]["range"]),
            "normalization": json.dumps(meta["input"]["normalization"]),
        },
    )
    onnx.checker.check_model(proto, full_check=True)
    return proto


class _Graph:
    """Nodes and initializers of the graph being written, with unique value names."""

    def __init__(self, onnx_module):
        self.onnx = onnx_module
        self.nodes: list = []
        self.initializers: list = []
        self._count = 0

    def _name(self, stem: str) -> str:
        self._count += 1
        return f"{stem}_{self._count}"

    def const(self, value: np.ndarray, stem: str = "const") -> str:
        name = self._name(stem)
        self.initializers.append(
            self.onnx.numpy_helper.from_array(np.asarray(value), name)
        )
        return name

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs) -> str:
        out = out or self._name(op_type.lower())
        self.nodes.append(
            self.onnx.helper.make_node(op_type, list(inputs), [out], **attrs)
        )
        return out


def _sequence(graph: _Graph, block, x: str, summary, prefix: str) -> str:
    for i, (_, module) in enumerate(block.named_layers()):
        row = summary.row(f"{prefix}{i}")
        x = _ONNX_WRITERS[row.spec.type](graph, module, x, row, summary)
    return x


def _value(variable) -> np.ndarray:
    return np.asarray(variable.get_value(), np.float32)


def _activation(graph: _Graph, x: str, name: str) -> str:
    if name == "identity":
        return x
    if name == "relu":
        return graph.op("Relu", x)
    if name == "relu6":
        return graph.op(
            "Clip", x, graph.const(np.float32(0.0)), graph.const(np.float32(6.0))
        )
    if name == "leaky_relu":
        return graph.op("LeakyRelu", x, alpha=0.01)  # jax.nn.leaky_relu's slope
    if name == "elu":
        return graph.op("Elu", x, alpha=1.0)
    if name == "gelu":  # the exact erf form, as layers.py
        scaled = graph.op("Div", x, graph.const(np.float32(math.sqrt(2.0))))
        erf1 = graph.op("Add", graph.op("Erf", scaled), graph.const(np.float32(1.0)))
        half = graph.op("Mul", x, graph.const(np.float32(0.5)))
        return graph.op("Mul", half, erf1)
    if name == "silu":
        return graph.op("Mul", x, graph.op("Sigmoid", x))
    if name == "tanh":
        return graph.op("Tanh", x)
    if name == "sigmoid":
        return graph.op("Sigmoid", x)
    if name == "softplus":
        return graph.op("Softplus", x)
    raise ExportError(f"activation {name!r} has no ONNX form")


def _onnx_pads(pads) -> list[int]:
    (top, bottom), (left, right) = pads
    return [int(top), int(left), int(bottom), int(right)]


def _conv(graph: _Graph, module: layers.Conv, x: str, *_) -> str:
    spec = module.spec
    kernel = _value(module.kernel).transpose(3, 2, 0, 1)  # HWIO -> OIHW
    inputs = [x, graph.const(kernel, "kernel")]
    if module.bias is not None:
        inputs.append(graph.const(_value(module.bias), "bias"))
    y = graph.op(
        "Conv",
        *inputs,
        kernel_shape=list(kernel.shape[2:]),
        strides=list(spec.stride),
        dilations=list(spec.dilation),
        pads=_onnx_pads(module.padding),
        group=int(spec.groups),
    )
    return _activation(graph, y, spec.activation)


def _pool(graph: _Graph, module: layers.Pool, x: str, row, _) -> str:
    spec = module.spec
    window = list(spec.window)
    stride = list(spec.stride or spec.window)
    pads = _onnx_pads(
        shapes.resolve_padding(spec.padding, row.input_shape[:2], window, stride)
    )
    shape = dict(kernel_shape=window, strides=stride, pads=pads)

    def mean(v: str, include_pad: int = 0) -> str:
        return graph.op("AveragePool", v, count_include_pad=include_pad, **shape)

    kind = spec.pool
    if kind == "max":  # padding never wins, as jaxcnn's -inf padding
        return graph.op("MaxPool", x, **shape)
    if kind == "avg":  # padding counted only with count_padding, as kernels.pool2d
        return mean(x, include_pad=int(spec.count_padding))
    if kind == "sum":  # zero padding adds nothing
        area = np.float32(window[0] * window[1])
        return graph.op("Mul", mean(x, include_pad=1), graph.const(area))
    if kind == "lp":  # (mean |x|^p)^(1/p) over the real cells
        p = np.float32(spec.p)
        powered = graph.op("Pow", graph.op("Abs", x), graph.const(p))
        return graph.op("Pow", mean(powered), graph.const(np.float32(1.0) / p))
    # geometric / harmonic: of max(x, 0); a window holding a value <= 0 pools to 0
    positive = graph.op("Greater", x, graph.const(np.float32(0.0)))
    safe = graph.op("Where", positive, x, graph.const(np.float32(1.0)))
    non_positive = graph.op(
        "Cast", graph.op("Not", positive), to=graph.onnx.TensorProto.FLOAT
    )
    has_zero = graph.op(
        "Greater", mean(non_positive, include_pad=1), graph.const(np.float32(0.0))
    )
    if kind == "geometric":
        pooled = graph.op("Exp", mean(graph.op("Log", safe)))
    else:
        pooled = graph.op("Reciprocal", mean(graph.op("Reciprocal", safe)))
    return graph.op("Where", has_zero, graph.const(np.float32(0.0)), pooled)


def _global_pool(graph: _Graph, module: layers.GlobalPool, x: str, *_) -> str:
    op = "GlobalMaxPool" if module.kind == "max" else "GlobalAveragePool"
    return graph.op("Flatten", graph.op(op, x), axis=1)


def _flatten(graph: _Graph, module, x: str, row, _) -> str:
    if len(row.input_shape) == 3:  # back to H, W, C order: the dense kernel's rows
        x = graph.op("Transpose", x, perm=[0, 2, 3, 1])
    return graph.op("Flatten", x, axis=1)


def _dense(graph: _Graph, module: layers.Dense, x: str, *_) -> str:
    y = graph.op("MatMul", x, graph.const(_value(module.kernel), "kernel"))
    if module.bias is not None:
        y = graph.op("Add", y, graph.const(_value(module.bias), "bias"))
    return _activation(graph, y, module.activation)


def _norm(graph: _Graph, module, x: str, row, _) -> str:
    channels = row.input_shape[-1]
    ones, zeros = np.ones(channels, np.float32), np.zeros(channels, np.float32)
    scale = ones if module.scale is None else _value(module.scale)
    bias = zeros if module.bias is None else _value(module.bias)
    image = len(row.input_shape) == 3
    if isinstance(module, nnx.BatchNorm):  # eval mode: the running statistics
        return graph.op(
            "BatchNormalization",
            x,
            graph.const(scale, "scale"),
            graph.const(bias, "bias"),
            graph.const(_value(module.mean), "mean"),
            graph.const(_value(module.var), "var"),
            epsilon=float(module.epsilon),
        )
    if isinstance(module, nnx.LayerNorm):  # over the channels of each position
        if image:
            x = graph.op("Transpose", x, perm=[0, 2, 3, 1])
        y = graph.op(
            "LayerNormalization",
            x,
            graph.const(scale, "scale"),
            graph.const(bias, "bias"),
            axis=-1,
            epsilon=float(module.epsilon),
        )
        return graph.op("Transpose", y, perm=[0, 3, 1, 2]) if image else y
    # group norm: over H, W and the channels of each group (contiguous in NCHW),
    # the variance as the mean of squared deviations (layers.make_norm)
    groups = int(module.num_groups)
    grouped = graph.op("Reshape", x, graph.const(np.asarray([0, groups, -1])))
    mean = graph.op("ReduceMean", grouped, axes=[2], keepdims=1)
    centred = graph.op("Sub", grouped, mean)
    var = graph.op(
        "ReduceMean", graph.op("Mul", centred, centred), axes=[2], keepdims=1
    )
    std = graph.op(
        "Sqrt", graph.op("Add", var, graph.const(np.float32(module.epsilon)))
    )
    normed = graph.op("Reshape", graph.op("Div", centred, std), graph.op("Shape", x))
    per_channel = (1, channels, 1, 1) if image else (1, channels)
    y = graph.op("Mul", normed, graph.const(scale.reshape(per_channel), "scale"))
    return graph.op("Add", y, graph.const(bias.reshape(per_channel), "bias"))


def _identity(graph: _Graph, module, x: str, *_) -> str:
    return x  # dropout: off in eval mode


def _activation_layer(graph: _Graph, module: layers.Activation, x: str, *_) -> str:
    return _activation(graph, x, module.activation)


def _residual(graph: _Graph, module: layers.Residual, x: str, row, summary) -> str:
    skip = x if module.proj is None else _conv(graph, module.proj, x)
    if module.proj_norm is not None:  # batch norm over the projection's output
        out = types.SimpleNamespace(input_shape=row.output_shape)
        skip = _norm(graph, module.proj_norm, skip, out, summary)
    body = _sequence(graph, module, x, summary, f"{row.index}.")
    return _activation(graph, graph.op("Add", body, skip), module.activation)


def _branches(graph: _Graph, module: layers.Branches, x: str, row, summary) -> str:
    outs = [  # an empty branch is the identity: its input
        _sequence(graph, getattr(module, name), x, summary, f"{row.index}.{name}.")
        for name in module.branch_names
    ]
    joined = (
        graph.op("Concat", *outs, axis=1)  # NCHW: along the channels
        if module.join == "concat"
        else graph.op("Sum", *outs)
    )
    return _activation(graph, joined, module.activation)


_ONNX_WRITERS.update(
    conv=_conv,
    pool=_pool,
    global_pool=_global_pool,
    flatten=_flatten,
    dense=_dense,
    norm=_norm,
    dropout=_identity,
    activation=_activation_layer,
    residual=_residual,
    branches=_branches,
)
