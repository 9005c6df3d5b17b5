"""Typed, frozen specs for models and runs; parsing from TOML/JSON/dicts and validation.

Nothing here imports JAX: a spec can be checked, printed and diffed anywhere.

A model is a `ModelSpec`: an input shape (H, W, C), a number of classes and a tuple of
layer specs (`ConvSpec`, `PoolSpec`, ...). A run is a `RunConfig`: which model, which data,
which optimiser and how to train. Both round-trip exactly through `to_dict`/`from_dict`.

One idea per module, each importing only those above it here:
  coerce    reading TOML/JSON tables; typed coercion of their values, errors naming the field
  layers    the layer specs and parsing a layer table
  model     the model spec and spec files
  sections  the run config's sections (model, data, optim, train) and their choices
  run       RunConfig and `resolve`, the precedence rule defaults < recipe < file < flags
"""

from jaxcnn.spec.coerce import MAX_NESTING, MAX_SIZE, Padding, Pair, read_table
from jaxcnn.spec.layers import (
    ACTIVATIONS,
    CONV_INITS,
    GLOBAL_POOL_KINDS,
    JOINS,
    LAYER_TYPES,
    NORM_KINDS,
    POOL_KINDS,
    Activation,
    ActivationSpec,
    BranchesSpec,
    ConvInit,
    ConvSpec,
    DenseSpec,
    DropoutSpec,
    FlattenSpec,
    GlobalPoolKind,
    GlobalPoolSpec,
    Join,
    LayerSpec,
    NormKind,
    NormSpec,
    PoolKind,
    PoolSpec,
    ResidualSpec,
    layer_from_dict,
)
from jaxcnn.spec.model import ModelSpec, load_spec_file
from jaxcnn.spec.run import (
    RunConfig,
    load_run_config,
    parse_override,
    resolve,
)
from jaxcnn.spec.sections import (
    KERNELS,
    OPTIMIZER_SLOTS,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULES,
    BadFiles,
    DataConfig,
    Kernels,
    ModelConfig,
    OptimConfig,
    Optimizer,
    Precision,
    Schedule,
    TrainConfig,
    is_folder_dataset,
)

__all__ = [
    "ACTIVATIONS",
    "CONV_INITS",
    "GLOBAL_POOL_KINDS",
    "JOINS",
    "KERNELS",
    "LAYER_TYPES",
    "MAX_NESTING",
    "MAX_SIZE",
    "NORM_KINDS",
    "OPTIMIZERS",
    "OPTIMIZER_SLOTS",
    "POOL_KINDS",
    "PRECISIONS",
    "SCHEDULES",
    "Activation",
    "ActivationSpec",
    "BadFiles",
    "BranchesSpec",
    "ConvInit",
    "ConvSpec",
    "DataConfig",
    "DenseSpec",
    "DropoutSpec",
    "FlattenSpec",
    "GlobalPoolKind",
    "GlobalPoolSpec",
    "Join",
    "Kernels",
    "LayerSpec",
    "ModelConfig",
    "ModelSpec",
    "NormKind",
    "NormSpec",
    "OptimConfig",
    "Optimizer",
    "Padding",
    "Pair",
    "PoolKind",
    "PoolSpec",
    "Precision",
    "ResidualSpec",
    "RunConfig",
    "Schedule",
    "TrainConfig",
    "is_folder_dataset",
    "layer_from_dict",
    "load_run_config",
    "load_spec_file",
    "parse_override",
    "read_table",
    "resolve",
]
