"""The run config: its sections together, and the one precedence rule that builds it.

defaults < recipe < config file < flags. `resolve` is that rule, and every way of
building a config from layers goes through it: `jaxcnn train` (a config file, then its
flags and --set), `RunConfig.from_dict` (a file or table alone, e.g. an experiment's or
a sweep's base), and `RunConfig.override` / `with_overrides` (a sweep point or a smoke
setting over a config already built, which then stands where the defaults stand).
"""

from __future__ import annotations

import dataclasses
import pathlib
import tomllib
from collections.abc import Mapping
from typing import Any

from jaxcnn import recipes
from jaxcnn.errors import SpecError
from jaxcnn.spec.coerce import fields_from_dict, plain, read_table, show
from jaxcnn.spec.model import ModelSpec
from jaxcnn.spec.sections import DataConfig, ModelConfig, OptimConfig, TrainConfig

_SECTIONS = {
    "model": ModelConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
}


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a training run needs; `config.json` in a workdir is `to_dict()`.

    `train.recipe` names a published recipe of the preset (jaxcnn.recipes); `resolve`
    says where its settings lie among the other values. A RunConfig built directly
    from its sections records the name only.
    """

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def __post_init__(self):
        if self.train.recipe is not None:
            self.recipe()

    def recipe(self) -> recipes.Recipe | None:
        """The recipe `train.recipe` names, or None.

        Raises:
          SpecError: the model is no preset with that recipe (listing the valid ones).
        """
        if self.train.recipe is None:
            return None
        return recipes.lookup(
            self.model.name, self.train.recipe, inline=self.model.spec is not None
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """Parses a run config; `model_spec` (written by training) is ignored.

        A `train.recipe` in `data` fills in every field `data` leaves out.
        """
        return resolve(data)

    @classmethod
    def _parse(cls, data: Mapping[str, Any]) -> RunConfig:
        """The config of one complete table, as it stands (no recipe applied)."""
        _check_table(data)
        sections = {}
        for name, section_cls in _SECTIONS.items():
            table = _section(data, name)
            spec = table.pop("spec", None) if name == "model" else None
            kwargs = fields_from_dict(section_cls, table, f"[{name}]")
            if spec is not None:
                try:
                    kwargs["spec"] = ModelSpec.from_dict(spec)
                except SpecError as e:
                    raise SpecError(f"[model] spec: {e}") from None
            try:
                sections[name] = section_cls(**kwargs)
            except SpecError as e:
                raise SpecError(f"[{name}]: {e}") from None
        return cls(**sections)

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for name in _SECTIONS:
            section = getattr(self, name)
            table = {
                f.name: plain(getattr(section, f.name))
                for f in dataclasses.fields(section)
            }
            if name == "model":
                table["spec"] = self.model.spec.to_dict() if self.model.spec else None
            out[name] = table
        return out

    def override(self, path: str, value: Any) -> RunConfig:
        """Returns a copy with one field changed, e.g. override("optim.lr", 0.01).

        `model.<field>` that is not a ModelConfig field goes to `model.args`, so a family
        knob reads `model.filters`. Values are type-checked like a config file's.
        `train.recipe` applies the recipe's settings over the current values.
        """
        return resolve(flags={path: value}, base=self)

    def with_overrides(self, overrides: Mapping[str, Any]) -> RunConfig:
        """`override` for every item at once: a `train.recipe` among them lies over
        the current values and under the other items (`resolve` with this as base)."""
        return resolve(flags=overrides, base=self)


def resolve(
    file: Mapping[str, Any] | None = None,
    flags: Mapping[str, Any] | None = None,
    *,
    base: RunConfig | None = None,
) -> RunConfig:
    """The run config of its layers, each over the ones before it:

    defaults < recipe < `file` < `flags`.

    Args:
      file: a run-config table ([model] [data] [optim] [train]), as a config file holds.
      flags: paths and values, e.g. {"optim.lr": 0.01, "model.filters": 64}: the
        command line's flags and --set items, a sweep point. `model.<field>` that is
        no ModelConfig field is `model.args.<field>`; later items win.
      base: a config already built, standing in for the defaults (its own recipe's
        settings are part of its values).

    The recipe is the one `flags` name, else the one `file` names (a recipe named by
    a flag still lies under the file), for the model named there, else by `file`,
    else by `base`. A recipe only `base` names is not applied again.

    Raises:
      SpecError: naming the section and field, or the path of a bad flag.
    """
    flags = dict(flags or {})
    low = base.to_dict() if base is not None else {}
    if file is not None:
        _check_table(file)

    def build(recipe: recipes.Recipe | None) -> RunConfig:
        table = _merge_tables(low, recipe.table()) if recipe else low
        table = _merge_tables(table, file or {})
        for path, value in flags.items():
            table = _set(table, path, value)
        return RunConfig._parse(table)

    config = build(None)
    names_recipe = "train.recipe" in flags or (
        isinstance(file, Mapping)
        and isinstance(file.get("train"), Mapping)
        and "recipe" in file["train"]
    )
    recipe = config.recipe() if names_recipe else None
    return build(recipe) if recipe else config


def _check_table(data: Any) -> None:
    if not isinstance(data, Mapping):
        raise SpecError(
            "a run config must be a table with [model] [data] [optim] [train] "
            f"sections, got {show(data)}"
        )
    unknown = sorted(map(str, set(data) - set(_SECTIONS) - {"model_spec"}))
    if unknown:
        raise SpecError(
            f"run config: unknown section {unknown[0]!r}; valid sections are "
            f"{', '.join(_SECTIONS)}"
        )


def _section(data: Mapping[str, Any], name: str) -> dict[str, Any]:
    """Section `name` of a run-config table, as a new dict (`model = "x"` is a name)."""
    table = data.get(name, {})
    if name == "model" and isinstance(table, str):
        table = {"name": table}
    if not isinstance(table, Mapping):
        raise SpecError(f"run config: [{name}] must be a table, got {show(table)}")
    return dict(table)


def _merge_tables(low: Mapping[str, Any], high: Mapping[str, Any]) -> dict[str, Any]:
    """Run-config tables `high` over `low`, field by field within each section."""
    out = dict(low)
    for section, table in high.items():
        below = out.get(section)
        if section == "model" and isinstance(below, str):
            below = {"name": below}
        if section == "model" and isinstance(table, str):
            table = {"name": table}
        if isinstance(below, Mapping) and isinstance(table, Mapping):
            table = {**below, **table}
        out[section] = table
    return out


def _set(data: Mapping[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of the table `data` with the field at `path` ("optim.lr") set to `value`."""
    section, _, field = path.partition(".")
    if section not in _SECTIONS or not field:
        raise SpecError(
            f"cannot set {path!r}: paths look like section.field with section one of "
            f"{', '.join(_SECTIONS)} (e.g. optim.lr, train.epochs, model.filters)"
        )
    table = _section(data, section)
    if section == "model" and field.startswith("args."):
        field = field[len("args.") :]
    if section == "model" and field not in ("name", "args", "spec"):
        args = table.get("args", {})
        # a non-table `args` stays as it is, for the parse to name it
        value = {**args, field: value} if isinstance(args, Mapping) else args
        field = "args"
    table[field] = value
    return {**data, section: table}


def parse_override(text: str) -> tuple[str, Any]:
    """Parses a `--set key=value` item; the value is read as TOML, else as a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise SpecError(f"--set expects key=value (e.g. optim.lr=0.01), got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except (ValueError, RecursionError):  # not a TOML value: the text itself
        value = raw.strip()
    return key.strip(), value


def load_run_config(path: str | pathlib.Path) -> RunConfig:
    """Reads a run config (.toml/.json with [model] [data] [optim] [train] tables)."""
    try:
        return resolve(read_table(path))
    except SpecError as e:
        raise SpecError(f"{path}: {e}") from None
