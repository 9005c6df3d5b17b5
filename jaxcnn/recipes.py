"""Published training recipes of the presets: the settings, their source, what it reports.

A recipe is frozen data: run-config paths and values (`optim.lr`, `train.batch_size`,
...) that reproduce how a preset's source trained it, the citation, the figure the source
reports, and where jaxcnn cannot follow the source exactly. `train.recipe = NAME` (or
`jaxcnn train --recipe NAME`) applies one; `jaxcnn summary PRESET` lists them.

Precedence: defaults < recipe < config file < command-line flags and --set.
`jaxcnn.spec.resolve` applies the recipe, so config files, --set, sweeps and config.json
all see the same values; this module sits below it and imports nothing of jaxcnn but
its errors.

Only presets whose source states its training procedure carry a recipe:

* `lenet5` has none: LeCun et al. (1998) trained it by stochastic diagonal
  Levenberg-Marquardt with Euclidean RBF output units and a MAP loss, neither of which
  jaxcnn has, and the preset replaces the RBF layer with a dense softmax classifier.
* `vgg_cifar` and `digits_cnn` follow no single published source.
"""

from __future__ import annotations

import dataclasses
import json
import textwrap
import types
from collections.abc import Mapping
from typing import Any

from jaxcnn.errors import SpecError


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A preset's published training recipe.

    Attributes:
      name: what `train.recipe` names it ("book", "paper").
      model: the preset it belongs to.
      source: the citation, precise enough to find the listing or section.
      reports: what the source reports for this recipe.
      settings: run-config paths and values, e.g. {"optim.lr": 1e-3}; read-only.
      notes: where jaxcnn differs from the source, and how the settings were derived.
    """

    name: str
    model: str
    source: str
    reports: str
    settings: Mapping[str, Any]
    notes: tuple[str, ...] = ()

    def __post_init__(self):
        for path in self.settings:
            section, _, field = path.partition(".")
            if section not in ("data", "optim", "train") or not field or "." in field:
                raise SpecError(
                    f"recipe {self.name!r} of {self.model!r}: setting {path!r} must be "
                    "data.X, optim.X or train.X (a recipe never changes the model)"
                )
            if path == "train.recipe":
                raise SpecError(f"recipe {self.name!r}: a recipe cannot name a recipe")
        object.__setattr__(
            self, "settings", types.MappingProxyType(dict(self.settings))
        )

    def table(self) -> dict[str, dict[str, Any]]:
        """The settings as run-config tables: {"optim": {"lr": 0.001}, ...}."""
        tables: dict[str, dict[str, Any]] = {}
        for path, value in self.settings.items():
            section, _, field = path.partition(".")
            tables.setdefault(section, {})[field] = value
        return tables

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model,
            "source": self.source,
            "reports": self.reports,
            "settings": _plain(self.settings),
            "notes": list(self.notes),
        }


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------- keras_mnist
KERAS_MNIST_BOOK = Recipe(
    name="book",
    model="keras_mnist",
    source=(
        "F. Chollet, Deep Learning with Python, 1st ed. (Manning, 2017), section 5.1, "
        "listings 5.1-5.3 (Keras 2.0.8): model.compile(optimizer='rmsprop', "
        "loss='categorical_crossentropy'); model.fit(train_images, train_labels, "
        "epochs=5, batch_size=64) on all 60,000 MNIST training images scaled by 1/255; "
        "model.evaluate on the 10,000 test images"
    ),
    reports=(
        "test accuracy 0.991 (the companion notebook prints 0.9913; the text says "
        "99.3%) after 5 epochs"
    ),
    settings={
        "data.dataset": "mnist",
        "data.val_split": "train[90%:]",
        "data.standardize": False,
        "optim.optimizer": "rmsprop",
        "optim.lr": 1e-3,
        "optim.schedule": "constant",
        "train.batch_size": 64,
        "train.epochs": 5,
    },
    notes=(
        "The book holds nothing out: training uses all 60,000 images. "
        "data.val_split = 'train[90%:]' keeps that (the validation metrics, which pick "
        "the checkpoint, re-read the last 6,000 training images), so no test image is "
        "used before the final evaluation.",
        "RMSprop with Keras's defaults (rho 0.9, no momentum); Keras 2.0.8 put epsilon "
        "1e-8 outside the square root, jaxcnn follows Keras 3 (1e-7 inside).",
        "Keras initialises kernels glorot_uniform, Flax lecun_normal; Keras also trains "
        "on the last partial batch of each epoch, jaxcnn drops it (32 of 60,000 images).",
        "The second edition (2021, listing 8.1) trains a different net (Conv 128, no "
        "Dense 64; 104,202 parameters) the same way and reports 0.991 too.",
    ),
)

# --------------------------------------------------------------------------- resnet_cifar
RESNET_CIFAR_PAPER = Recipe(
    name="paper",
    model="resnet_cifar",
    source=(
        "K. He, X. Zhang, S. Ren, J. Sun, Deep Residual Learning for Image Recognition, "
        "CVPR 2016, section 4.2 (CIFAR-10): SGD, momentum 0.9, weight decay 0.0001, "
        "mini-batch 128, learning rate 0.1 divided by 10 at 32k and 48k iterations, "
        "training ends at 64k iterations (determined on a 45k/5k train/val split); "
        "4-pixel padding with random 32x32 crops and horizontal flips; per-pixel mean "
        "subtracted"
    ),
    reports=(
        "CIFAR-10 test error (Table 6): ResNet-20 8.75%, ResNet-32 7.51%, ResNet-44 "
        "7.17%, ResNet-56 6.97%, ResNet-110 6.43% (blocks_per_stage 3, 5, 7, 9, 18)"
    ),
    settings={
        "data.dataset": "cifar10",
        "data.val_fraction": 0.1,
        "data.augment_crop": 4,
        "data.augment_flip": True,
        "data.standardize": True,
        "optim.optimizer": "momentum",
        "optim.momentum": 0.9,
        "optim.lr": 0.1,
        "optim.l2": 1e-4,
        "optim.schedule": "step",
        "optim.step_epochs": (91, 137),
        "optim.step_factor": 0.1,
        "train.batch_size": 128,
        "train.epochs": 182,
    },
    notes=(
        "Iterations to epochs: 45,000 training images / 128 = 351 steps per epoch, so "
        "the rate drops at epochs 91 and 137 (31,941 and 48,087 steps) and training "
        "ends after 182 epochs (63,882 steps).",
        "Weight decay is the paper's coupled L2 (optim.l2); jaxcnn does not decay "
        "biases and batch-norm parameters.",
        "The paper subtracts the per-pixel mean; data.standardize subtracts the "
        "per-channel mean and divides by the per-channel std.",
        "The paper's CIFAR nets use identity shortcuts padded with zeros where the "
        "shape changes and He initialisation; the preset uses 1x1 projection "
        "shortcuts there and Flax's lecun_normal. ResNet-110's 0.01 warm-up until "
        "training error falls below 80% is not part of the recipe.",
    ),
)

# The recipes of each preset, by name.
RECIPES: dict[str, dict[str, Recipe]] = {
    "keras_mnist": {"book": KERAS_MNIST_BOOK},
    "resnet_cifar": {"paper": RESNET_CIFAR_PAPER},
}


def for_model(model: str) -> tuple[Recipe, ...]:
    """The recipes of a preset (empty for any other model)."""
    return tuple(RECIPES.get(model, {}).values())


def _listing() -> str:
    return "; ".join(f"{m}: {', '.join(r)}" for m, r in RECIPES.items())


def lookup(model: str, name: str, *, inline: bool = False) -> Recipe:
    """The recipe `name` of preset `model`.

    Args:
      model: the run config's model name.
      name: the recipe's name.
      inline: the run config gives the model as an inline spec (never a preset).

    Raises:
      SpecError: the model is not a preset with recipes, or has no recipe `name`;
        the message lists the valid ones.
    """
    if inline or model not in RECIPES:
        what = "an inline model spec" if inline else f"model {model!r}"
        raise SpecError(
            f"train.recipe={json.dumps(name)}: {what} has no published recipes; "
            f"recipes belong to presets, and the presets with recipes are {_listing()}"
        )
    if name not in RECIPES[model]:
        raise SpecError(
            f"train.recipe={json.dumps(name)}: preset {model!r} has no recipe "
            f"{name!r}; its recipes are {', '.join(RECIPES[model])}"
        )
    return RECIPES[model][name]


def format_recipes(model: str, width: int = 89) -> str:
    """The text `jaxcnn summary` prints for a preset's recipes ("" when it has none)."""
    recipes = for_model(model)
    if not recipes:
        return ""

    def item(label: str, text: str, indent: int) -> list[str]:
        lead = " " * indent
        return textwrap.wrap(
            text,
            width,
            initial_indent=f"{lead}{label}",
            subsequent_indent=lead + "  ",
            break_long_words=False,
            break_on_hyphens=False,
        )

    lines = [f"Recipes (jaxcnn train --model {model} --recipe NAME):"]
    for recipe in recipes:
        settings = ", ".join(
            f"{path}={json.dumps(_plain(value))}"
            for path, value in recipe.settings.items()
        )
        lines += item(f"{recipe.name}: ", recipe.source, 2)
        lines += item("reports: ", recipe.reports, 4)
        lines += item("settings: ", settings, 4)
        for note in recipe.notes:
            lines += item("note: ", note, 4)
    return "\n".join(lines)
