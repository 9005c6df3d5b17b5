"""The run config's sections: which model, which data, which optimiser, how to train.

Each section is a frozen dataclass that type-checks its fields and checks its values;
`jaxcnn.spec.run` assembles them into a `RunConfig`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any, Literal, get_args

from jaxcnn.spec.coerce import check, coerce_fields, show
from jaxcnn.spec.model import ModelSpec

Optimizer = Literal["sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop"]
OPTIMIZERS = get_args(Optimizer)
# Per-parameter state each optimiser keeps (optax): momentum traces, Adam's two moments,
# RMSprop's mean square plus its momentum trace (footprint.memory_estimate uses these).
OPTIMIZER_SLOTS = {
    "sgd": 0,
    "momentum": 1,
    "nesterov": 1,
    "adam": 2,
    "adamw": 2,
    "rmsprop": 2,
}
Schedule = Literal["constant", "cosine", "warmup_cosine", "step", "onecycle"]
SCHEDULES = get_args(Schedule)
# conv/pool implementations (jaxcnn.kernels.plan): "auto" is the hand-written kernels
# on CPU and XLA's on GPU/TPU, "fast" the hand-written ones everywhere
Kernels = Literal["auto", "xla", "fast"]
KERNELS = get_args(Kernels)
# operand dtype of the convolutions and matmuls (jaxcnn.precision): parameters,
# optimiser state, accumulation, loss and metrics stay float32 either way
Precision = Literal["float32", "bfloat16"]
PRECISIONS = get_args(Precision)
# folders: unreadable or non-image files and empty class folders are an "error", or left
# out with a logged, counted note ("skip")
BadFiles = Literal["error", "skip"]
# The channel order the model takes ("bgr": Keras's caffe-style networks)
Channels = Literal["rgb", "bgr"]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which model: a preset, a family (`simple_cnn`) with `args`, a spec file, or inline.

    `args` holds family fields (filters=64, stride=2, ...) and, for any model,
    `input_shape`/`num_classes` overrides. `spec`, when given, is the model itself.
    """

    name: str = "digits_cnn"
    args: dict[str, Any] = dataclasses.field(default_factory=dict)
    spec: ModelSpec | None = None

    def __post_init__(self):
        coerce_fields(self)


def _check_config(section: str, config: Any) -> None:
    """Type-checks a run-config section; every int must fit in 64 bits (JAX, NumPy)."""
    coerce_fields(config)
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        for v in value if isinstance(value, tuple) else (value,):
            check(
                not isinstance(v, int) or -(2**63) <= v < 2**63,
                f"{section}.{f.name} must fit in 64 bits (-2**63 <= value < 2**63), "
                f"got {show(value)}",
            )


# A TFDS name: name, name/config, name:version or name/config:version (versions 1.2.3 or
# 1.*.*). A "namespace:" prefix names a community dataset; TFDS's builder-keyword suffix
# (name/key=value) is not accepted.
_DATASET_NAME = re.compile(
    r"(?:(?P<namespace>[\w-]+):)?[a-zA-Z]\w*(?:/[\w+.-]+)?(?::(?:\d+|\*)(?:\.(?:\d+|\*)){2})?"
)


def is_folder_dataset(name: str) -> bool:
    """Whether `data.dataset` names a folder: an existing directory or a path by its form.

    TFDS names may contain "/" (`emnist/balanced`), so a missing path counts as a folder
    only when it starts with "/", "." or "~", or ends with "/".
    """
    return (
        os.path.isdir(os.path.expanduser(name))
        or name.startswith(("/", ".", "~"))
        or name.endswith("/")
        or (os.sep != "/" and os.sep in name)
    )


def _check_dataset(name: str, allow_community: bool) -> None:
    if is_folder_dataset(name):
        return
    match = _DATASET_NAME.fullmatch(name)
    check(
        match is not None,
        f"data.dataset={show(name)} is not a TFDS dataset name or a folder; valid "
        "TFDS forms are name, name/config, name:version and name/config:version (e.g. "
        "mnist, emnist/balanced, mnist:3.0.1); a folder of images is an existing "
        "directory or a path starting with /, . or ~",
    )
    namespace = match.group("namespace")
    check(
        namespace is None or allow_community,
        f"data.dataset={show(name)} is a community dataset (namespace {namespace!r}), "
        "whose builder code TFDS may download and run; set data.allow_community = "
        "true to allow it",
    )


@dataclasses.dataclass(frozen=True)
class DataConfig:
    # Any TFDS image-classification name ("digits" is embedded), or a folder of image
    # files, one sub-folder per class (an existing directory, or a path starting with
    # "/", "." or "~"); see jaxcnn/data/folders.py for its layouts.
    dataset: str = "digits"
    # TFDS data directory (default: TFDS's own); for a folder, where its decoded images
    # are cached (default: ~/.cache/jaxcnn/folders, or $JAXCNN_FOLDER_CACHE)
    data_dir: str | None = None
    manual_dir: str | None = None  # folder of raw downloads to build the dataset from
    val_split: str | None = None  # None: the dataset's validation split, else carved
    # TFDS: carved from the end of train when there is no val split; folders: per class
    val_fraction: float = 0.1
    test_split: str = "test"
    test_fraction: float = 0.1  # folders without a test/ folder: carved per class
    split_seed: int = 0  # folders: seed of the carved splits, fixed across train.seed
    bad_files: BadFiles = "error"  # folders: unreadable files, empty classes
    train_examples: int | None = None  # use only the first N training examples
    standardize: bool = False  # per-channel mean/std from the train split
    # Fixed per-channel statistics instead: the model takes (x - mean) / std of images
    # in [0, 1], channels in `channels` order. train.init_from fills these in from the
    # run it starts from when that run normalised its input (an imported network: its
    # source's statistics) and neither standardize nor mean is set here.
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    channels: Channels = "rgb"
    augment_crop: int = 0  # random crop after zero padding by this many pixels
    augment_flip: bool = False  # random horizontal flip
    device_limit_mb: int = 4096  # larger datasets stream from tf.data instead
    # allow "namespace:name" community datasets (TFDS may download their builder code)
    allow_community: bool = False

    def __post_init__(self):
        _check_config("data", self)
        _check_dataset(self.dataset, self.allow_community)
        check(
            0.0 < self.val_fraction < 1.0,
            f"data.val_fraction must be in (0, 1), got {self.val_fraction}",
        )
        check(
            0.0 < self.test_fraction < 1.0
            and self.val_fraction + self.test_fraction < 1.0,
            f"data.test_fraction must be in (0, 1) and leave images for training "
            f"(val_fraction + test_fraction < 1), got test_fraction="
            f"{self.test_fraction} with val_fraction={self.val_fraction}",
        )
        check(
            self.train_examples is None or self.train_examples >= 1,
            f"data.train_examples must be >= 1, got {self.train_examples}",
        )
        check(
            self.augment_crop >= 0,
            f"data.augment_crop must be >= 0, got {self.augment_crop}",
        )
        _check_statistics(self)


def _check_statistics(config: DataConfig) -> None:
    """data.mean / data.std: both or neither, one value per channel, std > 0, and not
    with data.standardize (which computes its own)."""
    mean, std = config.mean, config.std
    check(
        (mean is None) == (std is None),
        f"data.mean and data.std go together (one value per channel each); got "
        f"mean={show(mean)} and std={show(std)}",
    )
    if mean is None:
        return
    check(
        not config.standardize,
        "data.standardize computes the statistics from the train split; it cannot "
        f"be combined with fixed data.mean={show(list(mean))} / data.std; set one",
    )
    check(
        len(mean) == len(std) >= 1,
        f"data.mean and data.std need one value per channel, the same number; got "
        f"{len(mean)} and {len(std)} values",
    )
    check(
        all(s > 0 and math.isfinite(s) for s in std)
        and all(math.isfinite(m) for m in mean),
        f"data.std values must be finite and > 0 and data.mean finite; got "
        f"mean={show(list(mean))}, std={show(list(std))}",
    )


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    optimizer: Optimizer = "adam"
    lr: float = 1e-3
    # None: the optimiser's own default, which is Keras's (constants in optim.py):
    # momentum 0.9 for momentum / nesterov, none for rmsprop; sgd, adam, adamw ignore it.
    momentum: float | None = None
    epsilon: float | None = None  # adam / adamw / rmsprop; None: Keras's 1e-7
    # Decoupled, as Keras's `weight_decay` on every optimiser: p -= lr * weight_decay * p
    # each step, outside the optimiser's moments. None: 0.004 for adamw (Keras), else 0.
    weight_decay: float | None = None
    l2: float = 0.0  # coupled: adds l2 * p to the gradient (PyTorch's weight_decay)
    schedule: Schedule = "constant"
    warmup_epochs: float = 0.0
    step_epochs: tuple[
        int, ...
    ] = ()  # "step": multiply lr by step_factor at these epochs
    step_factor: float = 0.1
    clip_norm: float | None = None  # clip the global gradient norm
    label_smoothing: float = 0.0

    def __post_init__(self):
        _check_config("optim", self)
        check(self.lr > 0, f"optim.lr must be > 0, got {self.lr}")
        check(
            self.momentum is None or 0 <= self.momentum < 1,
            f"optim.momentum must be in [0, 1), got {self.momentum}",
        )
        check(
            self.epsilon is None or self.epsilon > 0,
            f"optim.epsilon must be > 0, got {self.epsilon}",
        )
        for name in ("weight_decay", "l2"):
            value = getattr(self, name)
            check(
                value is None or value >= 0, f"optim.{name} must be >= 0, got {value}"
            )
        check(
            0.0 <= self.label_smoothing < 1.0,
            f"optim.label_smoothing must be in [0, 1), got {self.label_smoothing}",
        )
        check(
            self.clip_norm is None or self.clip_norm > 0,
            f"optim.clip_norm must be > 0, got {self.clip_norm}",
        )
        check(
            self.warmup_epochs >= 0,
            f"optim.warmup_epochs must be >= 0, got {self.warmup_epochs}",
        )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    # The defaults suit the embedded digits run (`jaxcnn train` with no arguments);
    # larger datasets want fewer epochs (--epochs) and often larger batches.
    epochs: int = 30
    batch_size: int = 32  # Keras's default
    eval_batch_size: int = 1000
    seed: int = 0
    steps_per_dispatch: int = 0  # 0: chosen automatically per backend
    patience: int = 0  # early stopping on val accuracy; 0 = off
    checkpoint_every: int = 1  # epochs between checkpoints
    checkpoint_steps: int = 0  # also checkpoint mid-epoch every N steps; 0 = off
    keep_checkpoints: int = 2  # latest N kept, plus the best by val accuracy
    kernels: Kernels = "auto"  # conv/pool implementation
    precision: Precision = "float32"  # conv/matmul operands (jaxcnn.precision)
    # conv/dense layer paths ("conv_0", "residual_3/proj") that compute in float32
    # whatever `precision` says
    fp32_layers: tuple[str, ...] = ()
    init_from: str | None = (
        None  # a finished run's workdir: start from its best weights
    )
    freeze: tuple[str, ...] = ()  # regexes searched in parameter paths (conv_0/kernel)
    new_head: bool = False  # with init_from: re-initialise the last dense layer
    # a published recipe of the preset (jaxcnn.recipes): its settings lie under the
    # config's own values; see RunConfig.from_dict / override
    recipe: str | None = None

    def __post_init__(self):
        _check_config("train", self)
        for name in (
            "epochs",
            "batch_size",
            "eval_batch_size",
            "checkpoint_every",
            "keep_checkpoints",
        ):
            value = getattr(self, name)
            check(value >= 1, f"train.{name} must be >= 1, got {value}")
        check(self.patience >= 0, f"train.patience must be >= 0, got {self.patience}")
        check(
            self.checkpoint_steps >= 0,
            f"train.checkpoint_steps must be >= 0 (0 = epoch ends only), got "
            f"{self.checkpoint_steps}",
        )
        check(
            self.steps_per_dispatch >= 0,
            f"train.steps_per_dispatch must be >= 0 (0 = auto), got {self.steps_per_dispatch}",
        )
