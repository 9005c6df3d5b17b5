"""Sweeps: many training runs over a grid or a search space, coordinated by Optuna.

A sweep is data: a base `RunConfig` plus either a list of override dicts (a grid, e.g.
`{"model.filters": 16, "model.stride": 2}`) or search axes sampled by Optuna's random or
TPE sampler. It lives in a TOML/JSON file (see `load_sweep`) or in a Python experiment
module with `base(smoke) -> RunConfig` and `sweep() -> list[dict]`.

A sweep directory holds:
  sweep.json            the resolved sweep (base config, points, settings)
  optuna.journal        the default Optuna storage (JournalFileBackend; any SQLAlchemy URL,
                        e.g. PostgreSQL, may be given instead for workers on many machines)
  trials/<key>/         one `fit` run directory per trial (config, metrics, checkpoints)
  results.csv/.jsonl    one row per trial, rewritten atomically after every trial

Coordination and fault tolerance:
  * Every grid point is checked statically first (`shapes.infer`); points whose shapes
    collapse are recorded as `invalid` with the reason and never reach JAX.
  * Valid points are enqueued in an order that keeps trials of one compiled program
    (same model, data and batch shapes; other lr or seed) back to back, so the
    persistent compilation cache (`train.enable_compilation_cache`) serves the repeats.
  * A worker pops one waiting trial at a time (atomic in the storage), trains it with
    `train.fit` in `trials/<key>/` and tells the result. A trial that raises (or hits
    NaN) is recorded `failed` with its error; the sweep goes on.
  * Liveness: on one machine a worker holds an flock on `trials/<key>/.lock` while it
    runs the trial; a RUNNING trial whose lock is free belongs to a dead worker and is
    failed and re-enqueued. With an RDB URL (PostgreSQL, SQLite) Optuna's heartbeat does
    the same across machines. The re-enqueued copy uses the same run directory, so `fit`
    resumes from its last checkpoint; completed trials are never run again.

Storage notes (Optuna 5.0): only RDBStorage has heartbeats; JournalStorage has none, hence
the flock liveness check above, which holds on one machine only. An SQLite file shared by
several local workers needs a busy timeout (set here: 120 s). Do not put SQLite (or the
journal file) on a network filesystem: its locking is unreliable there. For workers on
many machines use PostgreSQL (`--storage postgresql://...`) and a shared workdir; it
needs a driver (`pip install 'psycopg[binary]'`, SQLAlchemy 2.1's default for postgresql://).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import fcntl
import hashlib
import importlib.util
import inspect
import io
import itertools
import json
import math
import os
import pathlib
import re
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

from jaxcnn import metrics, models, rundir, shapes
from jaxcnn.errors import JaxcnnError, SpecError
from jaxcnn.spec import RunConfig, read_table

SAMPLERS = ("grid", "random", "tpe")
PRUNERS = ("none", "median", "asha")
STATUSES = ("ok", "invalid", "failed", "pruned", "running", "pending")
HEARTBEAT_SECONDS = 20  # RDB storages: a worker silent for GRACE_SECONDS is dead
GRACE_SECONDS = 90
MAX_RETRIES = 3  # a trial whose worker died is re-enqueued at most this often
JOURNAL = "optuna.journal"
SWEEP_FILE = "sweep.json"
RESULT_COLUMNS = (
    "dataset",
    "params",
    "flops",
    "train_accuracy",
    "train_loss",
    "val_accuracy",
    "val_loss",
    "best_val_accuracy",
    "test_accuracy",
    "test_loss",
    "epochs",
    "compile_seconds",
    "train_seconds",
    "images_per_second",
)
# Metrics averaged over seeds (mean, std and 95 % half width) when seeds > 1.
SEED_METRICS = (
    "test_accuracy",
    "test_loss",
    "best_val_accuracy",
    "val_accuracy",
    "train_accuracy",
)


# --------------------------------------------------------------------------- definition
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
            encoded = [_encode(c) for c in self.choices]
            return _decode(trial.suggest_categorical(name, encoded))
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
      replicas: how seeds > 1 run: "auto" (the faster one for the backend), "vmap"
        (one compiled program, replicas.py) or "sequential" (one fit per seed).
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
    replicas: Literal["auto", "vmap", "sequential"] = "auto"
    seed: int = 0

    def __post_init__(self):
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
            (
                self.replicas in ("auto", "vmap", "sequential"),
                f"replicas must be auto, vmap or sequential, got {self.replicas!r}",
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
            "replicas": self.replicas,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Sweep:
        data = dict(data)
        base = data.pop("base", {})
        base = base.to_dict() if isinstance(base, RunConfig) else base
        if isinstance(base.get("model"), Mapping) and base["model"].get("spec") is None:
            base = {
                **base,
                "model": {k: v for k, v in base["model"].items() if k != "spec"},
            }
        return cls(base=RunConfig.from_dict(base), **data)


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
    "replicas",
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
        return Sweep.from_dict(json.loads((path / SWEEP_FILE).read_text()))
    if path.suffix == ".py":
        if not path.is_file():
            raise SpecError(f"{path}: no such file")
        name = "_jaxcnn_experiment_" + re.sub(r"\W", "_", path.stem)
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        return _from_module(module, smoke, default_name=path.stem)
    table = read_table(path)
    try:
        return _from_table(table, smoke, default_name=path.stem)
    except SpecError as e:
        raise SpecError(f"{path}: {e}") from None


def _from_table(table: Mapping[str, Any], smoke: bool, default_name: str) -> Sweep:
    table = dict(table)
    settings = dict(table.pop("sweep", {}))
    unknown = set(settings) - set(_SWEEP_KEYS)
    if unknown:
        raise SpecError(
            f"[sweep]: unknown key {sorted(unknown)[0]!r}; valid keys are {', '.join(_SWEEP_KEYS)}"
        )
    base = RunConfig.from_dict(table)
    smoke_overrides = settings.pop("smoke", {})
    if smoke:
        base = base.with_overrides(smoke_overrides)
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
    settings.setdefault("name", name)
    search = getattr(module, "SEARCH", {})
    return Sweep(base=base, points=tuple(points), search=search, **settings)


# --------------------------------------------------------------------------- planning
@dataclasses.dataclass(frozen=True)
class TrialPlan:
    """One grid point after static checking.

    Attributes:
      key: stable name of the trial and of its run directory (trials/<key>).
      overrides: the swept values.
      error: why the point is invalid (shapes collapse, bad value), else None.
      group: trials with equal groups compile to the same programs.
      params / flops: static totals of the model (None when invalid).
    """

    key: str
    overrides: dict[str, Any]
    error: str | None
    group: str
    params: int | None = None
    flops: int | None = None


def trial_key(overrides: Mapping[str, Any]) -> str:
    """A readable, stable directory name: 'filters-16_stride-2_pool-max-1a2b3c4d'."""
    parts = []
    for path, value in overrides.items():
        short = path.rpartition(".")[2]
        text = value if isinstance(value, str) else json.dumps(value)
        parts.append(f"{short}-{text}")
    slug = re.sub(r"[^A-Za-z0-9._-]", "", "_".join(parts))[:60]
    digest = hashlib.sha1(_canonical(overrides).encode()).hexdigest()[:8]
    return f"{slug}-{digest}" if slug else digest


def _canonical(overrides: Mapping[str, Any]) -> str:
    return json.dumps(dict(sorted(overrides.items())), sort_keys=True, default=str)


def check_trial(base: RunConfig, overrides: Mapping[str, Any]) -> TrialPlan:
    """Applies `overrides` and checks the model statically (no JAX)."""
    key = trial_key(overrides)
    try:
        config = base.with_overrides(overrides)
        spec = models.load_spec(config.model)
        summary = shapes.infer(spec)
    except SpecError as e:
        return TrialPlan(key, dict(overrides), str(e), group="invalid")
    group = json.dumps(
        {
            "spec": spec.to_dict()["layers"],
            "input": list(spec.input_shape),
            "data": config.to_dict()["data"],
            "batch": [config.train.batch_size, config.train.eval_batch_size],
            "train": [config.train.steps_per_dispatch, config.train.kernels],
            "optim": [
                config.optim.optimizer,
                config.optim.schedule,
                config.optim.clip_norm,
            ],
        },
        sort_keys=True,
    )
    return TrialPlan(
        key, dict(overrides), None, group, summary.total_params, summary.total_flops
    )


def plan(sweep: Sweep) -> list[TrialPlan]:
    """Checks every grid point and orders them: invalid first (they cost nothing), then
    valid points grouped by compiled program, groups in order of first appearance.

    Raises:
      SpecError: two points with the same overrides.
    """
    plans = [check_trial(sweep.base, p) for p in sweep.points]
    seen: dict[str, dict] = {}
    for p in plans:
        if p.key in seen:
            raise SpecError(
                f"sweep {sweep.name!r}: the point {p.overrides} is listed twice"
            )
        seen[p.key] = p.overrides
    first: dict[str, int] = {}
    for i, p in enumerate(plans):
        first.setdefault(p.group, i)
    return sorted(plans, key=lambda p: (p.error is None, first[p.group]))


# --------------------------------------------------------------------------- storage
def _encode(value: Any) -> Any:
    """Optuna categorical values are None/bool/int/float/str; lists go as JSON text."""
    return (
        value
        if value is None or isinstance(value, bool | int | float | str)
        else json.dumps(value)
    )


def _decode(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "[{":
        with contextlib.suppress(json.JSONDecodeError):
            return json.loads(value)
    return value


def _retry_copy(study: Any, trial: Any) -> None:
    """Re-enqueues a trial whose worker died; the copy reuses its run directory."""
    import optuna

    history = list(trial.system_attrs.get("retry_history", [])) + [trial.number]
    if len(history) > MAX_RETRIES:
        return
    system_attrs = {**trial.system_attrs, "retry_history": history}
    study.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs=trial.user_attrs,
            system_attrs=system_attrs,
        )
    )


def open_storage(storage: str | None, sweep_dir: pathlib.Path) -> Any:
    """The Optuna storage: a journal file in the sweep dir by default, or a URL.

    A URL with a scheme (postgresql://, mysql://, sqlite:///) is an RDBStorage with
    heartbeats (dead workers are detected across machines); SQLite gets a busy timeout
    so several local workers can share the file. A plain path is a journal file.
    """
    import optuna

    if storage is None or "://" not in storage:
        path = pathlib.Path(storage) if storage else sweep_dir / JOURNAL
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = optuna.storages.journal.JournalFileBackend(
            str(path), lock_obj=optuna.storages.journal.JournalFileOpenLock(str(path))
        )
        return optuna.storages.JournalStorage(backend)
    engine_kwargs = {}
    if storage.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 120}}
    # Heartbeats are experimental in Optuna 5.0; we opt in on purpose, so every worker
    # need not warn about it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            storage,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=HEARTBEAT_SECONDS,
            grace_period=GRACE_SECONDS,
            heartbeat_stale_trial_callback=_retry_copy,
        )


def _sampler(sweep: Sweep) -> Any:
    import optuna

    if sweep.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=sweep.seed)
    return optuna.samplers.RandomSampler(seed=sweep.seed)


def _pruner(sweep: Sweep) -> Any:
    import optuna

    if sweep.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if sweep.pruner == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=1, reduction_factor=3
        )
    return optuna.pruners.NopPruner()


@contextlib.contextmanager
def _flock(path: pathlib.Path, *, blocking: bool = True) -> Iterator[bool]:
    """An exclusive fcntl lock on `path`; yields False when non-blocking and taken."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- worker
class _Worker:
    """Runs waiting trials of one sweep until none is left."""

    def __init__(
        self, sweep: Sweep, sweep_dir: pathlib.Path, storage: str | None, quiet: bool
    ):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.sweep, self.dir, self.quiet = sweep, sweep_dir, quiet
        self.storage = open_storage(storage, sweep_dir)
        self.heartbeat = isinstance(self.storage, optuna.storages.RDBStorage)
        self.study = self._open_study()
        self.datasets: dict[str, Any] = {}
        self.ran = 0
        # One categorical distribution per grid axis (Optuna needs it fixed per name).
        self._choices: dict[str, list] = {}
        for point in sweep.points:
            for path, value in point.items():
                choices = self._choices.setdefault(path, [])
                if _encode(value) not in choices:
                    choices.append(_encode(value))

    def _coord_lock(self):
        return _flock(self.dir / ".coord.lock")

    def _trial_lock_path(self, key: str) -> pathlib.Path:
        return self.dir / "trials" / key / ".lock"

    def _open_study(self):
        import optuna

        kwargs = dict(
            storage=self.storage,
            sampler=_sampler(self.sweep),
            pruner=_pruner(self.sweep),
        )
        with self._coord_lock():
            try:
                study = optuna.create_study(
                    study_name=self.sweep.name, direction="maximize", **kwargs
                )
                created = True
            except optuna.exceptions.DuplicatedStudyError:
                study = optuna.load_study(study_name=self.sweep.name, **kwargs)
                created = False
            saved = study.user_attrs.get("sweep")
            if saved is not None and saved["base"] != self.sweep.to_dict()["base"]:
                raise JaxcnnError(
                    f"sweep {self.sweep.name!r} in this storage has a different base config; "
                    "use another --workdir (or study name) for a changed sweep"
                )
            if not created:
                # Another machine may be enqueueing right now; give it a moment.
                deadline = time.time() + 60
                while (
                    not study.user_attrs.get("initialized") and time.time() < deadline
                ):
                    time.sleep(1.0)
            self._enqueue(study)
            if not study.user_attrs.get("initialized"):
                study.set_user_attr("sweep", self.sweep.to_dict())
                study.set_user_attr("initialized", True)
        return study

    def _enqueue(self, study) -> None:
        """Records invalid points and enqueues valid ones not in the study yet."""
        import optuna

        if self.sweep.sampler != "grid":
            return
        known = {t.user_attrs.get("key") for t in study.get_trials(deepcopy=False)}
        for p in plan(self.sweep):
            if p.key in known:
                continue
            attrs = {
                "key": p.key,
                "overrides": p.overrides,
                "params": p.params,
                "flops": p.flops,
            }
            if p.error is not None:
                study.add_trial(
                    optuna.trial.create_trial(
                        state=optuna.trial.TrialState.FAIL,
                        user_attrs={**attrs, "status": "invalid", "error": p.error},
                    )
                )
            else:
                study.enqueue_trial(
                    {k: _encode(v) for k, v in p.overrides.items()}, user_attrs=attrs
                )

    # ------------------------------------------------------------------ liveness
    def _reclaim(self) -> None:
        """Fails RUNNING trials whose worker died and re-enqueues them."""
        import optuna

        if self.heartbeat:
            optuna.storages.fail_stale_trials(self.study)
            return
        for t in self.study.get_trials(
            deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)
        ):
            key = t.user_attrs.get("key")
            if key is None:
                continue
            with _flock(self._trial_lock_path(key), blocking=False) as free:
                if not free:
                    continue  # its worker is alive
                try:
                    ok = self.storage.set_trial_state_values(
                        t._trial_id, optuna.trial.TrialState.FAIL
                    )
                except optuna.exceptions.UpdateFinishedTrialError:
                    ok = False
                if ok:
                    _retry_copy(
                        self.study, self.study.get_trials(deepcopy=True)[t.number]
                    )

    def _next(self):
        """Pops the next waiting trial, or asks a new one in a search sweep; or None."""
        import optuna

        # Optuna pops waiting trials atomically (set RUNNING only if still WAITING).
        trial_id = self.study._pop_waiting_trial_id()
        if trial_id is not None:
            return optuna.Trial(self.study, trial_id)
        if self.sweep.sampler == "grid":
            return None
        started = {
            t.user_attrs.get("key")
            for t in self.study.get_trials(deepcopy=False)
            if t.state != optuna.trial.TrialState.WAITING and t.user_attrs.get("key")
        }
        if len(started) >= self.sweep.trials:
            return None
        return self.study.ask()

    def run(self, max_trials: int | None = None) -> int:
        """Runs trials until the sweep is done (or `max_trials`); returns how many ran."""
        write_results(self.dir, self.study)
        while max_trials is None or self.ran < max_trials:
            lock_cm = None
            with self._coord_lock():
                self._reclaim()
                trial = self._next()
                if trial is None:
                    break
                key, overrides = self._identify(trial)
                if key is not None:
                    lock_cm = _flock(self._trial_lock_path(key))
                    lock_cm.__enter__()
            try:
                if key is not None:
                    self._run_trial(trial, key, overrides)
            finally:
                if lock_cm is not None:
                    lock_cm.__exit__(None, None, None)
            self.ran += 1
            write_results(self.dir, self.study)
        write_results(self.dir, self.study)
        return self.ran

    def _identify(self, trial) -> tuple[str | None, dict]:
        """The trial's key and overrides; settles duplicates and invalid samples at once."""
        import optuna

        attrs = trial.user_attrs
        if "key" in attrs:
            overrides = dict(attrs["overrides"])
            for path, value in overrides.items():  # registers params for plots / TPE
                trial.suggest_categorical(
                    path, self._choices.get(path, [_encode(value)])
                )
            key = attrs["key"]
            done = [
                t
                for t in self.study.get_trials(
                    deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)
                )
                if t.user_attrs.get("key") == key
            ]
            if (
                done
            ):  # a duplicate (e.g. enqueued twice by racing machines): never re-run
                trial.set_user_attr("status", "duplicate")
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                return None, overrides
            return key, overrides
        overrides = {
            path: axis.suggest(trial, path) for path, axis in self.sweep.search.items()
        }
        p = check_trial(self.sweep.base, overrides)
        for name, value in (
            ("key", p.key),
            ("overrides", p.overrides),
            ("params", p.params),
            ("flops", p.flops),
        ):
            trial.set_user_attr(name, value)
        if p.error is not None:
            trial.set_user_attr("status", "invalid")
            trial.set_user_attr("error", p.error)
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return None, overrides
        return p.key, overrides

    # ------------------------------------------------------------------ one trial
    def _dataset(self, config: RunConfig):
        from jaxcnn import data, train

        input_shape = train.resolve_spec(config).input_shape
        cache_key = json.dumps(
            [config.to_dict()["data"], list(input_shape)], sort_keys=True
        )
        if cache_key not in self.datasets:
            if len(self.datasets) >= 2:  # keep memory bounded in long mixed sweeps
                self.datasets.pop(next(iter(self.datasets)))
            self.datasets[cache_key] = data.load_dataset(
                config.data, input_shape=input_shape
            )
        return self.datasets[cache_key]

    def _run_trial(self, trial, key: str, overrides: dict) -> None:
        import optuna

        run_dir = self.dir / "trials" / key
        run_dir.mkdir(parents=True, exist_ok=True)
        stop = threading.Event()
        beat = None
        if self.heartbeat:
            beat = threading.Thread(
                target=self._beat, args=(trial._trial_id, stop), daemon=True
            )
            beat.start()
        epochs_now = [0]

        def on_epoch(record: dict) -> None:
            epochs_now[0] += 1
            if self.sweep.pruner != "none":
                trial.report(float(record["val_accuracy"]), int(record["epoch"]))
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned after epoch {record['epoch']}")

        try:
            config = self.sweep.base.with_overrides(overrides)
            if not self.quiet:
                print(f"[sweep {self.sweep.name}] trial {key}: {overrides}", flush=True)
            result = run_trial(
                config,
                run_dir,
                seeds=self.sweep.seeds,
                replicas=self.sweep.replicas,
                quiet=self.quiet,
                dataset=self._dataset(config),
                on_epoch=on_epoch,
            )
        except optuna.TrialPruned as e:
            trial.set_user_attr("status", "pruned")
            trial.set_user_attr("error", str(e))
            trial.set_user_attr("result", _history_result(run_dir))
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        except Exception as e:  # noqa: BLE001 -- one bad trial must not stop the sweep
            message = f"{type(e).__name__}: {e}"
            rundir.write_text_atomic(run_dir / "error.txt", traceback.format_exc())
            trial.set_user_attr("status", "failed")
            trial.set_user_attr("error", message)
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            if not self.quiet:
                print(
                    f"[sweep {self.sweep.name}] trial {key} failed: {message}",
                    flush=True,
                )
        else:
            result["epochs_this_attempt"] = epochs_now[0]
            result["resumed_from_epoch"] = int(result.get("epochs", 0)) - epochs_now[0]
            trial.set_user_attr("status", "ok")
            trial.set_user_attr("result", result)
            self.study.tell(trial, float(result.get("best_val_accuracy", math.nan)))
        finally:
            stop.set()
            if beat is not None:
                beat.join()

    def _beat(self, trial_id: int, stop: threading.Event) -> None:
        while not stop.is_set():
            self.storage.record_heartbeat(trial_id)
            stop.wait(HEARTBEAT_SECONDS)


def _history_result(run_dir: pathlib.Path) -> dict[str, Any]:
    history = rundir.read_metrics(run_dir)
    if not history:
        return {}
    last = history[-1]
    return {
        "epochs": last["epoch"],
        "train_accuracy": last["train_accuracy"],
        "train_loss": last["train_loss"],
        "val_accuracy": last["val_accuracy"],
        "val_loss": last["val_loss"],
        "best_val_accuracy": max(r["val_accuracy"] for r in history),
    }


def run_trial(
    config: RunConfig,
    run_dir: pathlib.Path,
    *,
    seeds: int = 1,
    replicas: str = "auto",
    quiet: bool = True,
    dataset: Any = None,
    on_epoch: Any = None,
) -> dict[str, Any]:
    """Trains one trial (K seeds when seeds > 1) and returns its result record.

    With seeds = 1 this is `train.fit` in `run_dir`; the record holds the summary plus
    the last epoch's train / val metrics. With seeds = K each metric also gets
    `<metric>_mean`, `_std` and `_ci95` (95 % half width, Student t) over the seeds, and
    the plain metric is the mean.
    """
    from jaxcnn import train

    if seeds == 1:
        fitted = train.fit(
            config, run_dir, quiet=quiet, dataset=dataset, on_epoch=on_epoch
        )
        return _record(fitted.summary, fitted.history)
    mode = replicas if replicas != "auto" else default_replicas_mode()
    if mode == "vmap":
        from jaxcnn import replicas as replicas_lib

        runs = replicas_lib.fit_replicas(
            config, run_dir, seeds, quiet=quiet, dataset=dataset, on_epoch=on_epoch
        )
        records = [_record(s, h) for s, h in runs]
    else:
        records = []
        for i in range(seeds):
            seeded = config.override("train.seed", config.train.seed + i)
            fitted = train.fit(
                seeded,
                run_dir / f"seed{i}",
                quiet=quiet,
                dataset=dataset,
                on_epoch=on_epoch if i == 0 else None,
            )
            records.append(_record(fitted.summary, fitted.history))
    return aggregate(records, mode)


def default_replicas_mode(backend: str | None = None) -> str:
    """How seeds > 1 run by default: the mode measured faster on the backend.

    On CPU (2 cores, digits, K=4, 8 epochs) vmap took 21.7 s and K sequential fits
    22.5 s, and with 2 epochs vmap was 3x slower (its compile dominates): sequential
    stays the default there, and it also resumes per seed. No accelerator measurement
    yet, so every backend uses sequential until one shows vmap ahead (replicas="vmap"
    forces it).
    """
    del backend
    return "sequential"


def _record(
    summary: Mapping[str, Any], history: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    out = dict(summary)
    if history:
        last = history[-1]
        for name in ("train_accuracy", "train_loss", "val_accuracy", "val_loss"):
            out[name] = last[name]
    return out


def aggregate(records: Sequence[Mapping[str, Any]], mode: str) -> dict[str, Any]:
    """Mean, std and 95 % half width of each numeric metric over seed records."""
    out: dict[str, Any] = dict(records[0])
    out["seeds"] = len(records)
    out["replicas"] = mode
    for name, value in records[0].items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        values = [float(r[name]) for r in records if r.get(name) is not None]
        if len(values) != len(records):
            continue
        mean, std, half = metrics.mean_confidence_interval(values)
        out[name] = mean
        if name in SEED_METRICS:
            out[f"{name}_mean"], out[f"{name}_std"], out[f"{name}_ci95"] = (
                mean,
                std,
                half,
            )
    return out


# --------------------------------------------------------------------------- results
def collect_rows(study: Any) -> list[dict[str, Any]]:
    """One row per trial key (its latest attempt), in trial order."""
    import optuna

    state_status = {
        optuna.trial.TrialState.WAITING: "pending",
        optuna.trial.TrialState.RUNNING: "running",
        optuna.trial.TrialState.COMPLETE: "ok",
        optuna.trial.TrialState.PRUNED: "pruned",
        optuna.trial.TrialState.FAIL: "failed",
    }
    latest: dict[str, Any] = {}
    order: list[str] = []
    for t in study.get_trials(deepcopy=False):
        key = t.user_attrs.get("key")
        if key is None or t.user_attrs.get("status") == "duplicate":
            continue
        if key not in latest:
            order.append(key)
            latest[key] = t
        elif (
            t.state == optuna.trial.TrialState.COMPLETE
            or latest[key].state != optuna.trial.TrialState.COMPLETE
        ):
            latest[key] = t
    rows = []
    for key in order:
        t = latest[key]
        attrs = t.user_attrs
        status = attrs.get("status") or state_status.get(t.state, "failed")
        if t.state == optuna.trial.TrialState.FAIL and status not in (
            "invalid",
            "failed",
        ):
            status = "failed"
        error = attrs.get("error")
        if status == "failed" and error is None:
            error = "the worker running this trial died (retries exhausted)"
        result = attrs.get("result") or {}
        row: dict[str, Any] = {"trial": key, "status": status, "error": error or ""}
        row.update(attrs.get("overrides", {}))
        row.update(
            {
                "dataset": result.get("dataset"),
                "params": result.get("total_params", attrs.get("params")),
                "flops": result.get("total_flops", attrs.get("flops")),
            }
        )
        for name in RESULT_COLUMNS[3:]:
            row[name] = result.get(name)
        for name in ("epochs_this_attempt", "resumed_from_epoch", "seeds"):
            if name in result:
                row[name] = result[name]
        for name in SEED_METRICS:
            for suffix in ("_mean", "_std", "_ci95"):
                if name + suffix in result:
                    row[name + suffix] = result[name + suffix]
        row["attempts"] = len(t.system_attrs.get("retry_history", [])) + 1
        row["optuna_number"] = t.number
        rows.append(row)
    return rows


def write_results(sweep_dir: pathlib.Path, study: Any) -> list[dict[str, Any]]:
    """Rewrites results.csv and results.jsonl atomically from the storage."""
    rows = collect_rows(study)
    # trial, status, error, then every swept path, then the metrics.
    columns = ["trial", "status", "error"]
    for row in rows:
        columns += [c for c in row if "." in c and c not in columns]
    for row in rows:
        columns += [c for c in row if c not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(v) for k, v in row.items()})
    rundir.write_text_atomic(sweep_dir / "results.csv", buffer.getvalue())
    lines = "".join(rundir.dumps(row) + "\n" for row in rows)
    rundir.write_text_atomic(sweep_dir / "results.jsonl", lines)
    return rows


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list | dict):
        return json.dumps(value)
    return value


def read_results(sweep_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of `sweep_dir/results.jsonl`."""
    path = pathlib.Path(sweep_dir) / "results.jsonl"
    if not path.is_file():
        raise JaxcnnError(
            f"{path} not found: {sweep_dir} is not a sweep directory (run `jaxcnn sweep` first)"
        )
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------- entry points
def _prepare_dir(sweep: Sweep, workdir: str | os.PathLike | None) -> pathlib.Path:
    sweep_dir = pathlib.Path(workdir or f"runs/sweeps/{sweep.name}")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    saved = sweep_dir / SWEEP_FILE
    if saved.exists():
        old = json.loads(saved.read_text())
        if old.get("base") != sweep.to_dict()["base"] or old.get("name") != sweep.name:
            raise JaxcnnError(
                f"{sweep_dir} holds sweep {old.get('name')!r} with a different base config; "
                "use another --workdir for a changed sweep"
            )
    rundir.write_json_atomic(saved, sweep.to_dict())
    return sweep_dir


def work(
    source: Any,
    workdir: str | os.PathLike | None = None,
    *,
    storage: str | None = None,
    smoke: bool = False,
    quiet: bool = False,
    max_trials: int | None = None,
) -> int:
    """Runs one worker: trials of the sweep until none is left. Returns how many it ran.

    Start it N times (on one machine with the default journal storage, or on many
    machines with one `storage` URL and a shared workdir) to run trials in parallel.
    """
    sweep = load_sweep(source, smoke=smoke)
    sweep_dir = _prepare_dir(sweep, workdir)
    return _Worker(sweep, sweep_dir, storage, quiet).run(max_trials)


def run_sweep(
    config_or_path: Any,
    workdir: str | os.PathLike | None = None,
    *,
    storage: str | None = None,
    workers: int = 1,
    smoke: bool = False,
    quiet: bool = False,
) -> list[dict[str, Any]]:
    """Runs (or resumes) a sweep to the end and returns its result rows.

    Args:
      config_or_path: a `Sweep`, a TOML/JSON/.py file, an experiment module, or a sweep
        directory.
      workdir: the sweep directory (default runs/sweeps/<name>).
      storage: Optuna storage URL (default: a journal file in workdir).
      workers: worker processes on this machine (1 = run in this process).
      smoke: shrink the sweep to seconds (the module's / file's smoke settings).
      quiet: no progress output.

    Returns:
      The rows written to results.jsonl: one per trial.
    """
    sweep = load_sweep(config_or_path, smoke=smoke)
    sweep_dir = _prepare_dir(sweep, workdir)
    if workers <= 1:
        _Worker(sweep, sweep_dir, storage, quiet).run()
    else:
        # Workers load the resolved sweep from sweep_dir/sweep.json, so any source works.
        _Worker(sweep, sweep_dir, storage, True)  # creates the study and enqueues once
        command = [
            sys.executable,
            "-m",
            "jaxcnn",
            "sweep",
            "worker",
            str(sweep_dir),
            "--workdir",
            str(sweep_dir),
        ]
        if storage:
            command += ["--storage", storage]
        if quiet:
            command.append("--quiet")
        procs = [subprocess.Popen(command) for _ in range(workers)]
        codes = [p.wait() for p in procs]
        if any(codes):
            raise JaxcnnError(f"sweep workers exited with {codes}; rerun to resume")
    rows = read_results(sweep_dir)
    if not quiet:
        counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
        print(
            f"sweep {sweep.name}: "
            + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
            + f"; results in {sweep_dir / 'results.csv'}"
        )
    return rows


def experiment_main(module_file: str, argv: Sequence[str] | None = None) -> int:
    """The command line of an experiments/*.py script: [--smoke] [--workdir DIR] ..."""
    import argparse

    name = pathlib.Path(module_file).stem
    parser = argparse.ArgumentParser(
        prog=f"experiments/{name}.py",
        description=f"Runs the {name!r} sweep, then its report.",
    )
    parser.add_argument("--smoke", action="store_true", help="a seconds-long version")
    parser.add_argument(
        "--workdir", help=f"sweep directory (default runs/sweeps/{name})"
    )
    parser.add_argument(
        "--storage", help="Optuna storage URL (default: journal in workdir)"
    )
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--no-report", action="store_true", help="skip the figures")
    args = parser.parse_args(argv)
    workdir = args.workdir or f"runs/sweeps/{name}{'-smoke' if args.smoke else ''}"
    try:
        run_sweep(
            module_file,
            workdir,
            storage=args.storage,
            workers=args.workers,
            smoke=args.smoke,
            quiet=args.quiet,
        )
        if not args.no_report:
            from jaxcnn import sweep_report

            print(sweep_report.report(workdir))
    except JaxcnnError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
