"""Shared pieces of the experiments: data locations, datasets per run size, the base run,
the training budgets.

Datasets: MNIST and Fashion-MNIST (CIFAR-10 too when it is prepared in the data dir), built
offline from the raw files in ../shared/data (JAXCNN_SHARED_DATA) into a TFDS data dir
(JAXCNN_DATA_DIR, default ~/.cache/jaxcnn/tfds). --smoke uses the embedded 8x8 digits.

Budgets: experiments that call `budget()` train for the budget named by JAXCNN_BUDGET
(`short`, the default, or `long`; BUDGETS, or the experiment's own table), so a ranking
can be checked at a second budget:
`JAXCNN_BUDGET=long python -m experiments.grid --workdir runs/grid-long`. A sweep
directory holds one budget (its base config); give each budget its own --workdir.
"""

from __future__ import annotations

import os
import pathlib
import sys
from typing import Any

from jaxcnn import RunConfig
from jaxcnn.data.catalog import shared_data_dir
from jaxcnn.errors import SpecError

SHARED_DATA = shared_data_dir()
DATA_DIR = os.environ.get(
    "JAXCNN_DATA_DIR", str(pathlib.Path.home() / ".cache" / "jaxcnn" / "tfds")
)
SHAPES = {
    "mnist": (28, 28, 1),
    "fashion_mnist": (28, 28, 1),
    "cifar10": (32, 32, 3),
    "digits": (8, 8, 1),
}


BUDGET_ENV = "JAXCNN_BUDGET"
# name -> epochs and training images (the first N of the train split)
BUDGETS = {
    "short": {"epochs": 2, "train_examples": 4000},
    "long": {"epochs": 3, "train_examples": 12000},
    "full": {"epochs": 3, "train_examples": None},  # the whole train split (54,000)
}


def budget(budgets: dict[str, dict[str, int]] = BUDGETS) -> dict[str, int]:
    """The epochs and train_examples of the budget JAXCNN_BUDGET names (default short)
    in `budgets` (an experiment may define its own).

    Raises:
      SpecError: JAXCNN_BUDGET names no budget.
    """
    name = os.environ.get(BUDGET_ENV) or "short"
    if name not in budgets:
        raise SpecError(
            f"{BUDGET_ENV}={name!r} is not a budget; use one of {', '.join(budgets)} "
            f"({'; '.join(f'{k}: {v}' for k, v in budgets.items())})"
        )
    return dict(budgets[name])


def datasets(smoke: bool) -> list[str]:
    """digits for --smoke; else MNIST, Fashion-MNIST and CIFAR-10 when it is prepared."""
    if smoke:
        return ["digits"]
    names = ["mnist", "fashion_mnist"]
    if (pathlib.Path(DATA_DIR) / "cifar10").is_dir():
        names.append("cifar10")
    return names


def dataset_point(name: str) -> dict[str, Any]:
    """The overrides that switch a run to dataset `name` (its input shape included)."""
    return {"data.dataset": name, "model.input_shape": list(SHAPES[name])}


def base_config(
    smoke: bool,
    *,
    epochs: int = 2,
    train_examples: int | None = 10000,
    **model_args: Any,
) -> RunConfig:
    """simple_cnn on MNIST with Adam; smoke: digits, 1 epoch on 512 examples."""
    name = "digits" if smoke else "mnist"
    args = {
        "input_shape": list(SHAPES[name]),
        "depth": 2,
        "dense_units": 64,
        **model_args,
    }
    if smoke:  # 8x8 digits: 'same' padding keeps two conv + pool stages alive
        args["padding"] = "same"
    return RunConfig.from_dict(
        {
            "model": {"name": "simple_cnn", "args": args},
            "data": {
                "dataset": name,
                "data_dir": None if smoke else DATA_DIR,
                "train_examples": 512 if smoke else train_examples,
            },
            "optim": {"optimizer": "adam", "lr": 1e-3},
            "train": {
                "epochs": 1 if smoke else epochs,
                "batch_size": 64 if smoke else 128,
                "keep_checkpoints": 1,
            },
        }
    )


def prepare(names: list[str]) -> None:
    """Builds the datasets in DATA_DIR from the raw files in SHARED_DATA (once)."""
    from jaxcnn import data

    for name in names:
        if name == "digits":
            continue
        manual = SHARED_DATA / name
        data.prepare_dataset(
            name, data_dir=DATA_DIR, manual_dir=str(manual) if manual.is_dir() else None
        )


def main(module_file: str) -> None:
    """`python -m experiments.NAME [--smoke] [--workdir DIR]`: prepare data, sweep, report."""
    from jaxcnn import cli

    prepare(datasets("--smoke" in sys.argv))
    sys.exit(cli.experiment_main(module_file))
