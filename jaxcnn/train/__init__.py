"""Training: the train/eval steps (`step`), where batches come from (`batches`), the
device layout (`sharding`), fit() as phases (`loop`), and evaluate/predict (`evaluate`)."""

from jaxcnn.train.evaluate import Predictor, evaluate, predict
from jaxcnn.train.loop import FitResult, fit, resolve_spec
from jaxcnn.train.step import (
    Steps,
    default_steps_per_dispatch,
    enable_compilation_cache,
    rolls_steps,
)
from jaxcnn.transfer import Restored, restore

__all__ = [
    "FitResult",
    "Predictor",
    "Restored",
    "Steps",
    "default_steps_per_dispatch",
    "enable_compilation_cache",
    "evaluate",
    "fit",
    "predict",
    "resolve_spec",
    "restore",
    "rolls_steps",
]
