"""What a sweep is: search axes, the `Sweep` dataclass, and loading one from a file.

A sweep is data: a base `RunConfig` plus either a list of override dicts (a grid, e.g.
`{"model.filters": 16, "model.stride": 2}`) or search axes sampled by Optuna's random or
TPE sampler. It lives in a TOML/JSON file, in a Python experiment module with
`base(smoke) -> RunConfig` and `sweep() -> list[dict]`, or in a sweep directory's
sweep.json (see `load_sweep`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import inspect
import itertools
import json
import os
import pathlib
import re
import sys
import types
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from jaxcnn.errors import SpecError, listing
from jaxcnn.spec import RunConfig, read_table, resolve

SAMPLERS = ("grid", "random", "tpe")
PRUNERS = ("none", "median", "asha")
SWEEP_FILE = "sweep.json"  # the resolved sweep, in every sweep directory
# Sweep names name a folder (runs/sweeps/<name>) and an Optuna study.
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")


def check_name(name: Any) -> str:
    """Returns `name` if it can name a sweep folder: letters, digits, '-', '_', '.',
    not starting with '.' (so no '/', '..' or absolute paths).

    Raises:
      SpecError: any other name.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise SpecError(
            f"sweep name {name!r} is not valid: it names the folder runs/sweeps/<name> and "
            "the Optuna study, so it may hold only letters, digits, '-', '_' and '.', and "
            "must not start with '.'; set [sweep] name (SETTINGS['name'] in a module)"
        )
    return name


def encode_choice(value: Any) -> Any:
    """Optuna categorical values are None/bool/int/float/str; lists go as JSON text."""
    return (
        value
        if value is None or isinstance(value, bool | int | float | str)
        else json.dumps(value)
    )


def decode_choice(value: Any) -> Any:
    """The inverse of `encode_choice`."""
    if isinstance(value, str) and value[:1] in "[{":
        with contextlib.suppress(json.JSONDecodeError):
            return json.loads(value)
    return value


@dataclasses.dataclass(frozen=True)
class Axis:
    """One search axis: a list of choices, or a numeric range [low, high]."""

    choices: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    integer: bool = False

    @classmethod
    def parse(cls, name: str, value: Any) -> Axis:
        """[a, b, c] -> choices; {low, high, log?, step?, int?} -> a range."""
        if isinstance(value, Axis):
            return value
        if isinstance(value, Sequence) and not isinstance(value, str):
            if not value:
                raise SpecError(f"sweep axis {name!r}: the list of choices is empty")
            return cls(choices=tuple(value))
        if isinstance(value, Mapping) and {"low", "high"} <= set(value):
            unknown = set(value) - {"low", "high", "log", "step", "int"}
            if unknown:
                raise SpecError(
                    f"sweep axis {name!r}: unknown key {sorted(unknown)[0]!r}; a range has "
                    "low, high and optionally log, step, int"
                )
            low, high = value["low"], value["high"]
            if not low < high:
                raise SpecError(
                    f"sweep axis {name!r}: need low < high, got {low}, {high}"
                )
            integer = bool(
                value.get("int", isinstance(low, int) and isinstance(high, int))
            )
            return cls(
                low=low,
                high=high,
                log=bool(value.get("log", False)),
                step=value.get("step"),
                integer=integer,
            )
        raise SpecError(
            f"sweep axis {name!r}: expected a list of values or a table "
            f"{{low = ..., high = ..., log = true}}, got {value!r}"
        )

    def suggest(self, trial: Any, name: str) -> Any:
        if self.choices:
            encoded = [encode_choice(c) for c in self.choices]
            return decode_choice(trial.suggest_categorical(name, encoded))
        if self.integer:
            return trial.suggest_int(
                name,
                int(self.low),
                int(self.high),
                step=int(self.step or 1),
                log=self.log,
            )
        return trial.suggest_float(
            name, float(self.low), float(self.high), step=self.step, log=self.log
        )

    def to_dict(self) -> Any:
        if self.choices:
            return list(self.choices)
        out = {"low": self.low, "high": self.high, "log": self.log, "int": self.integer}
        if self.step is not None:
            out["step"] = self.step
        return out


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A base run config plus what to vary, and how trials are chosen.

    Attributes:
      name: the Optuna study name (unique per storage).
      base: the run every trial starts from.
      points: grid sampler: the override dicts, one per trial.
      search: random / tpe samplers: axes by config path.
      sampler: "grid" runs `points`; "random" / "tpe" sample `trials` points of `search`.
      trials: how many points a random / tpe sweep tries.
      pruner: stop weak trials early on validation accuracy ("median", or "asha" =
        successive halving); "none" trains every trial to the end.
      seeds: train each trial with this many seeds (train.seed, +1, ...) and report
        mean, std and a 95 % interval of every metric.
      seed: the sampler's seed.
    """

    name: str
    base: RunConfig
    points: tuple[dict[str, Any], ...] = ()
    search: dict[str, Axis] = dataclasses.field(default_factory=dict)
    sampler: Literal["grid", "random", "tpe"] = "grid"
    trials: int = 0
    pruner: Literal["none", "median", "asha"] = "none"
    seeds: int = 1
    seed: int = 0

    def __post_init__(self):
        check_name(self.name)
        object.__setattr__(self, "points", tuple(dict(p) for p in self.points))
        object.__setattr__(
            self, "search", {k: Axis.parse(k, v) for k, v in dict(self.search).items()}
        )
        checks = (
            (
                self.sampler in SAMPLERS,
                f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}",
            ),
            (
                self.pruner in PRUNERS,
                f"pruner must be one of {', '.join(PRUNERS)}, got {self.pruner!r}",
            ),
            (self.seeds >= 1, f"seeds must be >= 1, got {self.seeds}"),
            (
                self.sampler != "grid" or self.points,
                "a grid sweep needs points (a [sweep.grid] table or sweep() in a module)",
            ),
            (
                self.sampler == "grid" or (self.search and self.trials >= 1),
                f"a {self.sampler} sweep needs [sweep.search] axes and trials >= 1",
            ),
        )
        for ok, message in checks:
            if not ok:
                raise SpecError(f"sweep {self.name!r}: {message}")
        for point in self.points:
            for path in point:
                if "." not in path:
                    raise SpecError(
                        f"sweep {self.name!r}: override {path!r} is not a config path; "
                        "write section.field, e.g. model.filters or optim.lr"
                    )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "base": self.base.to_dict(),
            "points": [dict(p) for p in self.points],
            "search": {k: a.to_dict() for k, a in self.search.items()},
            "sampler": self.sampler,
            "trials": self.trials,
            "pruner": self.pruner,
            "seeds": self.seeds,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Sweep:
        data = dict(data)
        # sweep.json files and Optuna studies written by jaxcnn before seeds always ran
        # as one `fit` each name how they ran; the key no longer chooses anything.
        data.pop("replicas", None)
        base = data.pop("base", {})
        base = base.to_dict() if isinstance(base, RunConfig) else base
        if isinstance(base.get("model"), Mapping) and base["model"].get("spec") is None:
            base = {
                **base,
                "model": {k: v for k, v in base["model"].items() if k != "spec"},
            }
        return cls(base=RunConfig.from_dict(base), **data)


def read_saved(sweep_dir: str | os.PathLike) -> Sweep:
    """The sweep saved in `sweep_dir`/sweep.json.

    Raises:
      SpecError: the file is missing, is not JSON, or does not describe a sweep.
    """
    path = pathlib.Path(sweep_dir) / SWEEP_FILE
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise TypeError(f"expected a JSON object, got {type(data).__name__}")
        return Sweep.from_dict(data)
    except (OSError, ValueError, TypeError, AttributeError, SpecError) as e:
        raise SpecError(
            f"{path} does not hold a readable sweep ({type(e).__name__}: {e}). "
            "`jaxcnn sweep` writes it; restore it, or start the sweep afresh from its "
            f"file with --workdir {path.parent} --restart (which discards its trials), "
            "or in another --workdir"
        ) from None


def changes(old: Sweep, new: Sweep) -> list[str]:
    """What differs between two versions of one sweep that its finished trials would not
    match: the name, the base config, the sampler and (random / tpe) the search space.

    Grid points, seeds, trials, pruner and the sampler's seed may change: a
    sweep grows by running only the points (or seeds) it has not run yet.
    """
    out = (
        [] if old.name == new.name else [f"name: {old.name!r} there, {new.name!r} now"]
    )
    out += [
        f"base {path}: {json.dumps(a)} there, {json.dumps(b)} now"
        for path, a, b in _diff(old.base.to_dict(), new.base.to_dict())
    ]
    if old.sampler != new.sampler:
        out.append(f"sampler: {old.sampler!r} there, {new.sampler!r} now")
    elif new.sampler != "grid" and old.search != new.search:
        before = {k: a.to_dict() for k, a in old.search.items()}
        now = {k: a.to_dict() for k, a in new.search.items()}
        out.append(f"search space: {json.dumps(before)} there, {json.dumps(now)} now")
    return out


def check_unchanged(old: Sweep, new: Sweep, where: str) -> None:
    """Raises unless `new` may continue the sweep `old` held in `where`.

    Raises:
      SpecError: `changes(old, new)` is not empty; the message lists them.
    """
    found = changes(old, new)
    if found:
        raise SpecError(
            f"{where} holds sweep {old.name!r} with other settings ("
            + listing(found, 5, sep="; ")
            + "). A sweep may gain grid points, seeds or trials, but its finished "
            "trials would not match a changed base config, sampler or search space. "
            "Run the changed sweep in another --workdir, or pass --restart to discard "
            "the trials there and start afresh."
        )


def _diff(old: Any, new: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted path, old value, new value) of each leaf that differs."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += _diff(old.get(key), new.get(key), f"{path}.{key}" if path else key)
        return out
    return [] if old == new else [(path, old, new)]


def expand_grid(axes: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Cartesian product of axes, the last axis varying fastest.

    expand_grid({"model.filters": [8, 16], "model.stride": [1, 2]}) ->
      [{filters 8, stride 1}, {8, 2}, {16, 1}, {16, 2}] (keys as given).
    """
    names = list(axes)
    for name in names:
        if (
            isinstance(axes[name], str)
            or not isinstance(axes[name], Sequence)
            or not axes[name]
        ):
            raise SpecError(
                f"grid axis {name!r} must be a non-empty list, got {axes[name]!r}"
            )
    return [
        dict(zip(names, combo, strict=True))
        for combo in itertools.product(*axes.values())
    ]


_SWEEP_KEYS = (
    "name",
    "sampler",
    "trials",
    "pruner",
    "seeds",
    "seed",
    "grid",
    "points",
    "search",
    "smoke",
)


def load_sweep(
    source: str | os.PathLike | Sweep | Any, *, smoke: bool = False
) -> Sweep:
    """Reads a sweep from a TOML/JSON file, a Python experiment file or module, or a
    sweep directory (its sweep.json).

    TOML layout: the run config sections ([model], [data], [optim], [train]) plus

        [sweep]
        name = "filters"            # default: the file name
        sampler = "grid"            # grid | random | tpe
        trials = 20                 # random / tpe only
        pruner = "none"             # none | median | asha
        seeds = 1
        [sweep.grid]                # grid: the cartesian product of these lists
        "model.filters" = [8, 16, 32]
        [sweep.search]              # random / tpe: lists or ranges
        "optim.lr" = { low = 1e-4, high = 1e-2, log = true }
        [sweep.smoke]               # overrides applied with smoke=True
        "train.epochs" = 1

    A Python module defines `base(smoke=False) -> RunConfig` and `sweep() -> list[dict]`
    (optionally `sweep(smoke)`), and may set `SETTINGS = {"sampler": ..., ...}` and
    `SEARCH = {path: axis}`.
    """
    if isinstance(source, Sweep):
        return source
    if inspect.ismodule(source):
        return _from_module(source, smoke)
    path = pathlib.Path(source)
    if path.is_dir():
        if not (path / SWEEP_FILE).is_file():
            raise SpecError(f"{path} is not a sweep directory (no {SWEEP_FILE})")
        return read_saved(path)
    if path.suffix == ".py":
        if not path.is_file():
            raise SpecError(f"{path}: no such file")
        return _from_module(load_module(path), smoke, default_name=path.stem)
    table = read_table(path)
    try:
        return _from_table(table, smoke, default_name=path.stem)
    except SpecError as e:
        raise SpecError(f"{path}: {e}") from None


def load_module(path: str | os.PathLike) -> types.ModuleType:
    """Imports a sweep's Python file, afresh on every call.

    A file in a package folder (one holding `__init__.py`, as `experiments/`) is imported
    as a submodule of that folder's package, so its relative imports (`from . import
    _common`) resolve as under `python -m experiments.NAME`. The package is registered
    under a name derived from its folder, so two checkouts' `experiments/` never mix;
    `sys.path` is left alone.
    """
    path = pathlib.Path(path).resolve()
    stem = re.sub(r"\W", "_", path.stem)
    name = f"_jaxcnn_experiment_{stem}"
    folder = path.parent
    if (folder / "__init__.py").is_file():
        digest = hashlib.sha256(str(folder).encode()).hexdigest()[:12]
        package = f"_jaxcnn_experiments_{digest}"
        if package not in sys.modules:
            init_spec = importlib.util.spec_from_file_location(
                package,
                folder / "__init__.py",
                submodule_search_locations=[str(folder)],
            )
            init = importlib.util.module_from_spec(init_spec)
            sys.modules[package] = init
            init_spec.loader.exec_module(init)
        name = f"{package}.{stem}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def _from_table(table: Mapping[str, Any], smoke: bool, default_name: str) -> Sweep:
    table = dict(table)
    settings = dict(table.pop("sweep", {}))
    _refuse_removed(settings, "[sweep]")
    unknown = set(settings) - set(_SWEEP_KEYS)
    if unknown:
        raise SpecError(
            f"[sweep]: unknown key {sorted(unknown)[0]!r}; valid keys are {', '.join(_SWEEP_KEYS)}"
        )
    smoke_overrides = settings.pop("smoke", {})
    base = resolve(table, smoke_overrides if smoke else {})
    points = list(settings.pop("points", []))
    if "grid" in settings:
        points += expand_grid(settings.pop("grid"))
    settings.setdefault("name", default_name)
    return Sweep(base=base, points=tuple(points), **settings)


def _from_module(module: Any, smoke: bool, default_name: str | None = None) -> Sweep:
    name = default_name or module.__name__.rpartition(".")[2]
    for fn in ("base", "sweep"):
        if not callable(getattr(module, fn, None)):
            raise SpecError(
                f"experiment {name!r} must define {fn}() (see STYLE.md section 3)"
            )
    base = module.base(smoke=smoke)
    if not isinstance(base, RunConfig):
        raise SpecError(
            f"experiment {name!r}: base() must return a RunConfig, got {base!r}"
        )
    sweep_fn = module.sweep
    takes_smoke = "smoke" in inspect.signature(sweep_fn).parameters
    points = sweep_fn(smoke=smoke) if takes_smoke else sweep_fn()
    settings = dict(getattr(module, "SETTINGS", {}))
    _refuse_removed(settings, f"experiment {name!r}: SETTINGS")
    settings.setdefault("name", name)
    search = getattr(module, "SEARCH", {})
    return Sweep(base=base, points=tuple(points), search=search, **settings)


def _refuse_removed(settings: Mapping[str, Any], where: str) -> None:
    """Raises on a sweep setting jaxcnn no longer has, saying what to do instead.

    Raises:
      SpecError: `settings` sets `replicas` (seeds once could run as one vmapped
        program; every seed is now its own `fit`, one after another).
    """
    if "replicas" in settings:
        raise SpecError(
            f"{where}: the setting 'replicas' = {settings['replicas']!r} was removed: "
            "the seeds of a trial always run one after another, each a full `fit` "
            "(resumable per seed, with the same checkpoints and metrics as a single "
            "run); delete the setting and keep `seeds`"
        )
