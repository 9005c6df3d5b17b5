"""jaxcnn: declarative convolutional networks in JAX / Flax NNX.

The names below are the public API; heavy modules (JAX, TFDS) load on first use.
Importing jaxcnn changes nothing in the process: the XLA:CPU settings the `jaxcnn`
command applies (jaxcnn/cputune.py) are one call, `jaxcnn.cputune.apply()`, for a
program that owns its process and calls it before anything runs on JAX.
"""

import importlib

from jaxcnn.errors import (
    CheckpointError,
    DataError,
    JaxcnnError,
    SpecError,
    TrainingError,
)
from jaxcnn.spec import (
    DataConfig,
    LayerSpec,
    ModelConfig,
    ModelSpec,
    OptimConfig,
    RunConfig,
    TrainConfig,
    load_run_config,
)

__version__ = "0.1.0"

_LAZY = {
    "infer": "jaxcnn.shapes",
    "summarize": "jaxcnn.shapes",
    "preset": "jaxcnn.models",
    "load_spec": "jaxcnn.models",
    "build_model": "jaxcnn.models",
    "features": "jaxcnn.models",
    "set_kernels": "jaxcnn.models",
    "PRESETS": "jaxcnn.models",
    "FAMILIES": "jaxcnn.models",
    "param_paths": "jaxcnn.models",
    "load_dataset": "jaxcnn.data",
    "fit": "jaxcnn.train",
    "evaluate": "jaxcnn.train",
    "predict": "jaxcnn.train",
    "restore": "jaxcnn.train",
    "run_sweep": "jaxcnn.sweep",
    "feature_maps": "jaxcnn.viz",
    "init_from_run": "jaxcnn.transfer",
    "trainable_mask": "jaxcnn.transfer",
    "export_run": "jaxcnn.export",
}

__all__ = [
    "CheckpointError",
    "DataConfig",
    "DataError",
    "JaxcnnError",
    "LayerSpec",
    "ModelConfig",
    "ModelSpec",
    "OptimConfig",
    "RunConfig",
    "SpecError",
    "TrainConfig",
    "TrainingError",
    "load_run_config",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'jaxcnn' has no attribute {name!r}")
