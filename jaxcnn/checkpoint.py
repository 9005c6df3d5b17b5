"""Checkpoints of a training run (the only module that imports orbax).

A `Checkpointer` wraps an orbax `CheckpointManager` whose step directories hold three items:

- ``state``: the pytree passed to `Checkpointer.save` (nested dicts of arrays, typed PRNG
  key arrays included: orbax stores their key data and `restore` wraps them again with
  the implementation of the target's keys),
- ``meta``: a JSON object (epoch, resolved run config, ...),
- ``metrics``: the metrics given to `save`; ``val_accuracy`` ranks the checkpoints.

orbax writes each step into a temporary directory and renames it when complete, so a
process killed in the middle of a save leaves the previous checkpoints intact (the
unfinished temporary directory is removed the next time a writing `Checkpointer` opens
the directory).

A reader (``Checkpointer(directory, read_only=True)``: eval, predict, viz, a transfer's
source) changes nothing in the directory: it creates no folder, removes no temporary
directory (that may be the unfinished save of a run still training) and cannot save.
It sees the steps that were complete when it opened; a step that the training process
removes while it is being read is skipped like any other unusable one, with a warning.

Restores are checked before orbax reads any array: the stored tree (paths, shapes,
dtypes) must match the target exactly, otherwise a `CheckpointError` names the first
mismatching paths and their shapes.

A checkpoint is used only once it is verified: `save` refuses a state holding NaN or Inf
and stores a sha256 digest of every leaf's bytes in the meta; `restore` recomputes the
digests and rejects a restored state that differs or is not finite. A checkpoint that
fails (unreadable files, garbage metrics or meta, a digest mismatch, NaN/Inf) is skipped
by ``restore("latest")`` and ``restore("best")`` with a one-line warning on stderr that
names the step and the reason; the next checkpoint in line is used instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import sys
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocp_managers

from jaxcnn.errors import (
    CheckpointError,
    DiskFull,
    TrainingError,
    is_disk_full,
    listing,
)

PyTree = Any
StepRef = int | Literal["latest", "best"]

_STATE, _META = "state", "meta"
_DIGESTS = "state_sha256"  # meta key: {leaf path: sha256 hex digest of its bytes}
_MAX_LISTED = 5  # mismatching paths named in one error message
# why a step is skipped when its directory went away while it was read
_REMOVED = "it was removed while being read, by the process training in this directory"


class Restored(NamedTuple):
    """What `Checkpointer.restore` returns: the state, its meta, and the step used."""

    state: PyTree
    meta: dict
    step: int


class _Unusable(Exception):
    """A checkpoint step that cannot be used; the message says why."""


def has_checkpoint(directory: str | os.PathLike) -> bool:
    """True if `directory` holds at least one finalised checkpoint step."""
    path = os.fspath(directory)
    return os.path.isdir(path) and bool(ocp.utils.checkpoint_steps(path))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _best_value(metrics: Any) -> float:
    """Ranking key: val_accuracy, with missing, NaN or malformed values ranked last."""
    value = metrics.get("val_accuracy") if isinstance(metrics, Mapping) else None
    if not _is_number(value) or math.isnan(value):
        return -math.inf
    return float(value)


def nonfinite_paths(state: PyTree) -> list[str]:
    """The paths of the floating-point leaves of `state` that hold a NaN or an Inf.

    The check runs where the arrays live; only one boolean per leaf reaches the host.
    """
    floats = [
        (path, leaf)
        for path, leaf in _flat(state)
        if jnp.issubdtype(getattr(leaf, "dtype", np.float64), jnp.inexact)
    ]
    finite = [_host(jnp.isfinite(leaf).all()) for _, leaf in floats]
    return [path for (path, _), ok in zip(floats, finite, strict=True) if not ok]


class _Manager(ocp.CheckpointManager):
    """orbax's manager, except that a step whose metrics file is not a JSON object of
    numbers is recorded in `unusable` (and ranks as unmeasured) instead of stopping the
    whole directory from opening."""

    def __init__(self, *args, **kwargs):
        self.unusable: dict[int, str] = {}
        super().__init__(*args, **kwargs)

    def _get_metrics(self, step: int):
        try:
            metrics = super()._get_metrics(step)
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
            self.unusable[step] = f"its metrics file cannot be read ({_reason(e)})"
            return None
        if metrics is not None and not (
            isinstance(metrics, Mapping) and all(map(_is_number, metrics.values()))
        ):
            self.unusable[step] = (
                "its metrics file does not hold a JSON object of numbers"
            )
            return None
        return metrics


class Checkpointer:
    """Saves and restores training state; keeps the latest `keep` steps and the best one.

    Use as a context manager (``with Checkpointer(workdir / "checkpoints") as ckpt: ...``).

    Args:
      directory: the checkpoint directory (created if missing).
      keep: how many of the most recent checkpoints to keep; the checkpoint with the
        best ``val_accuracy`` is kept in addition, however old.
      save_every: save only when ``meta["epoch"]`` is a multiple of this, except that a
        new best ``val_accuracy`` or ``force=True`` (use it for the last epoch) always
        saves.
      async_save: let orbax write in a background thread; the checkpoint is then
        durable once `wait` / `close` returns (or the next `save` starts). By default
        `save` returns only when the checkpoint is on disk.
      read_only: open the directory to restore only: nothing in it is created,
        removed or written (another process may be training there), and `save` raises.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        keep: int = 2,
        save_every: int = 1,
        async_save: bool = False,
        read_only: bool = False,
    ):
        if keep < 1 or save_every < 1:
            raise CheckpointError(
                f"Checkpointer needs keep >= 1 and save_every >= 1, got keep={keep}, "
                f"save_every={save_every}"
            )
        self.directory = os.path.abspath(os.fspath(directory))
        self.keep, self.save_every = keep, save_every
        self.read_only = read_only
        if read_only:
            # orbax's own read-only mode: no root folder or metadata created, no save
            # or delete; and no clean-up of temporary directories, which may be the
            # save in progress of the process that trains here
            options = ocp.CheckpointManagerOptions(
                best_fn=_best_value,
                best_mode="max",
                read_only=True,
                save_interval_steps=0,
                create=False,
                cleanup_tmp_directories=False,
                save_root_metadata=False,
            )
        else:
            policy = ocp_managers.AnyPreservationPolicy(
                [
                    ocp_managers.LatestN(n=keep),
                    ocp_managers.BestN(
                        get_metric_fn=_best_value,
                        n=1,
                        keep_checkpoints_without_metrics=False,
                    ),
                ]
            )
            options = ocp.CheckpointManagerOptions(
                best_fn=_best_value,
                best_mode="max",
                preservation_policy=policy,
                cleanup_tmp_directories=True,  # leftovers of a save that was killed
                enable_async_checkpointing=async_save,
            )
        try:
            with _quiet_absl(read_only):  # orbax logs "Given directory is read only"
                self._manager = _Manager(
                    self.directory,
                    item_handlers={
                        _STATE: ocp.StandardCheckpointHandler(),
                        _META: ocp.JsonCheckpointHandler(),
                    },
                    options=options,
                )
        except OSError as e:
            raise CheckpointError(
                f"cannot open checkpoint directory {self.directory}: {e}"
            ) from e
        # steps found unusable, with the reason (the manager adds those whose metrics
        # file is malformed); restores skip them, saves replace them
        self._bad: dict[int, str] = self._manager.unusable
        self._best = self._best_so_far()

    # -- saving ---------------------------------------------------------------------------

    def save(
        self,
        step: int,
        state: PyTree,
        *,
        metrics: Mapping[str, float],
        meta: Mapping[str, Any],
        force: bool = False,
    ) -> bool:
        """Saves `state` as checkpoint `step` (see the class docstring for when it skips).

        Args:
          step: the global optimiser step (checkpoint name); must be new, unless the
            step there was found unusable (it is then replaced).
          state: pytree of arrays, e.g. ``{"model": ..., "optimizer": ...}`` pure dicts.
          metrics: scalar metrics; ``val_accuracy`` selects the best checkpoint.
          meta: JSON-serialisable information returned by `restore` / `read_meta`.
          force: save even when ``save_every`` would skip this epoch.

        Returns:
          True if a checkpoint was written.

        Raises:
          TrainingError: a floating-point leaf of `state` holds NaN or Inf (see
            `check_finite`); nothing is written.
          CheckpointError: the step exists, `meta` is not JSON-serialisable, or the
            directory was opened read-only.
        """
        if self.read_only:
            raise CheckpointError(
                f"checkpoint directory {self.directory} was opened read-only; step "
                f"{step} is not saved"
            )
        try:
            meta = json.loads(json.dumps(dict(meta)))
        except (TypeError, ValueError) as e:
            raise CheckpointError(
                f"checkpoint meta for step {step} is not JSON-serialisable: {e}"
            ) from e
        metrics = {k: float(v) for k, v in metrics.items()}
        value = _best_value(metrics)
        is_best = "val_accuracy" in metrics and (
            self._best is None or value > self._best
        )
        epoch = meta.get("epoch")
        due = epoch is None or int(epoch) % self.save_every == 0
        if not (force or due or is_best):
            return False
        self.check_finite(state, epoch=epoch, step=step)
        self._make_room(step)
        meta[_DIGESTS] = _digests(state)
        args = ocp.args.Composite(
            **{_STATE: ocp.args.StandardSave(state), _META: ocp.args.JsonSave(meta)}
        )
        with self._disk_full_is_one_error(step):
            self._manager.save(step, args=args, metrics=metrics, force=True)
        if is_best:
            self._best = value
        return True

    def check_finite(
        self, state: PyTree, *, epoch: int | None = None, step: int | None = None
    ) -> None:
        """Raises `TrainingError` if a floating-point leaf of `state` holds NaN or Inf.

        `save` calls it before writing, so such a state never becomes a checkpoint; a
        training loop may call it every epoch to stop as soon as the weights diverge.

        Args:
          state: the pytree that would be saved.
          epoch: the epoch it belongs to (1-based), named in the message.
          step: the step it belongs to, named when `epoch` is not given.
        """
        bad = nonfinite_paths(state)
        if not bad:
            return
        when = f"epoch {epoch}" if epoch is not None else f"step {step}"
        latest = self.latest_step()
        kept = (
            f"the last good checkpoint (step {latest}) is kept in {self.directory}"
            if latest is not None
            else f"no checkpoint was saved in {self.directory}"
        )
        raise TrainingError(
            f"the weights became NaN or Inf in {when} ({_listing(bad)}); they are not "
            f"saved, and {kept}. Lower the learning rate (optim.lr) or set "
            f"optim.clip_norm=1.0"
        )

    def _make_room(self, step: int) -> None:
        """Removes an unusable checkpoint at `step`; refuses to overwrite a good one."""
        if step not in self._manager.all_steps():
            return
        if step not in self._bad:
            raise CheckpointError(
                f"checkpoint step {step} already exists in {self.directory}; restore it to "
                f"resume, or use a fresh directory to start over"
            )
        self._manager.delete(step)
        del self._bad[step]
        self._best = self._best_so_far()

    def wait(self) -> None:
        """Blocks until every started save is on disk.

        Raises:
          DiskFull: the disk filled while a save was written (the save is incomplete and
            will be ignored; the checkpoints before it are intact).
        """
        with self._disk_full_is_one_error(None):
            self._manager.wait_until_finished()

    @contextlib.contextmanager
    def _disk_full_is_one_error(self, step: int | None):
        """A full disk during a save: one `DiskFull` naming what is kept, instead of
        orbax's writer tasks each printing a traceback (`FailedWriteNoise`)."""
        quiet = FailedWriteNoise().install()
        try:
            yield
        except Exception as e:
            if not is_disk_full(e):
                raise
            kept = [s for s in self._manager.all_steps() if s != step]
            what = "a checkpoint" if step is None else f"checkpoint {step}"
            raise DiskFull(
                f"the disk is full: {what} could not be written in {self.directory} "
                f"({_reason(e)}). "
                + (
                    f"The checkpoints before it are intact (latest: step {max(kept)}); "
                    if kept
                    else "No checkpoint was complete; "
                )
                + "free some space and run the same command again to resume"
            ) from e
        finally:
            quiet.remove()

    def close(self) -> None:
        """Finishes pending saves and releases the manager."""
        with self._disk_full_is_one_error(None):
            self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- listing --------------------------------------------------------------------------

    def all_steps(self) -> list[int]:
        """Every finalised step, unusable ones included."""
        self.wait()
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest step not known to be unusable."""
        good = [s for s in self._candidates("latest") if s not in self._bad]
        return good[0] if good else None

    def best_step(self) -> int | None:
        """The step with the highest ``val_accuracy`` (the latest of equals), among
        those not known to be unusable; None when no step has a ``val_accuracy``."""
        good = [s for s in self._candidates("best") if s not in self._bad]
        return good[0] if good and self._value(good[0]) > -math.inf else None

    def _value(self, step: int | None) -> float:
        return -math.inf if step is None else _best_value(self._manager.metrics(step))

    def _best_so_far(self) -> float | None:
        best = self.best_step()
        return None if best is None else self._value(best)

    def _candidates(self, which: Literal["latest", "best"]) -> list[int]:
        """The steps in the order `which` tries them. Known-bad steps stay in the list
        (a restore names them as it skips them); for "best", those whose metrics could
        not be read go first, as they might have ranked first."""
        steps = list(reversed(self.all_steps()))
        if which == "best":
            # stable sort: the newest of equals first
            steps.sort(key=lambda s: (s in self._bad, self._value(s)), reverse=True)
        return steps

    def _resolve(self, step: StepRef) -> list[int]:
        """The steps to try for `step`: one for a number, fallbacks for latest / best."""
        steps = self.all_steps()
        if not steps:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        if step in ("latest", "best"):
            return self._candidates(step)
        if isinstance(step, str) or step not in steps:
            raise CheckpointError(
                f"no checkpoint step {step!r} in {self.directory}; available steps: {steps} "
                f"(or 'latest' / 'best')"
            )
        return [int(step)]

    # -- restoring ------------------------------------------------------------------------

    def read_meta(self, step: StepRef = "latest") -> dict:
        """The JSON meta saved with `step` (the first readable one for latest / best)."""
        meta, _ = self._first_usable(step, self._read_meta)
        meta.pop(_DIGESTS, None)
        return meta

    def restore(self, step: StepRef, target: PyTree) -> Restored:
        """Restores checkpoint `step` into the structure of `target`, verified.

        For ``"latest"`` and ``"best"``, an unusable checkpoint (unreadable, its data
        not matching the digests saved with it, NaN/Inf values) is skipped with a
        one-line warning on stderr, and the next one in line is restored instead.

        Args:
          step: a step number, ``"latest"`` or ``"best"``.
          target: pytree of arrays or `jax.ShapeDtypeStruct` (e.g. from `nnx.eval_shape`)
            with exactly the saved structure, shapes and dtypes.

        Returns:
          `Restored` (state, meta, step): the restored pytree (arrays, typed keys like
          the target's), the saved meta, and the step it came from.

        Raises:
          CheckpointError: no such checkpoint, no usable one, the named step unusable,
            or a structure/shape/dtype mismatch (naming the parameter paths and shapes).
        """
        (state, meta), used = self._first_usable(
            step, lambda s: self._restore_step(s, target)
        )
        return Restored(state, meta, used)

    def _first_usable(self, step: StepRef, load) -> tuple[Any, int]:
        """`load(s)` of the first usable step for `step`, warning about skipped ones."""
        candidates = self._resolve(step)
        skipped = []
        for s in candidates:
            try:
                loaded = load(s)
            except _Unusable as e:
                self._bad[s] = str(e)
                if not os.path.isdir(os.path.join(self.directory, str(s))):
                    self._bad[s] = _REMOVED
                if not isinstance(step, str):  # a step asked for by number
                    raise CheckpointError(
                        f"checkpoint step {s} in {self.directory} is unusable: {e}. "
                        f"Restore 'latest' or 'best' to fall back to a usable one"
                    ) from None
                skipped.append(s)
                continue
            for bad in skipped:
                _warn(
                    f"checkpoint step {bad} in {self.directory} is unusable "
                    f"({self._bad[bad]}); using step {s} instead"
                )
            return loaded, s
        reasons = "; ".join(f"step {s}: {self._bad[s]}" for s in sorted(self._bad))
        if all(self._bad.get(s) == _REMOVED for s in candidates):
            raise CheckpointError(
                f"no usable checkpoint in {self.directory} ({reasons}); run the command "
                f"again to read the checkpoints the training process keeps now"
            )
        raise CheckpointError(
            f"no usable checkpoint in {self.directory} ({reasons}). Start the run afresh "
            f"(jaxcnn train --restart) or restore the directory from a backup"
        )

    def _read_meta(self, step: int) -> dict:
        """The meta saved with `step`; raises _Unusable when it cannot be read."""
        self._manager.metrics(step)  # records a malformed metrics file in self._bad
        if step in self._bad:
            raise _Unusable(self._bad[step])
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(**{_META: ocp.args.JsonRestore()})
            )
        except Exception as e:  # orbax raises many types for unreadable files
            raise _Unusable(f"its meta file cannot be read ({_reason(e)})") from e
        meta = restored[_META]
        if not isinstance(meta, Mapping):
            raise _Unusable("its meta file does not hold a JSON object")
        return dict(meta)

    def _restore_step(self, step: int, target: PyTree) -> tuple[PyTree, dict]:
        """Restores and verifies one step; raises _Unusable when it cannot be used."""
        meta = self._read_meta(step)
        try:
            stored_meta = self._manager.item_metadata(step)[_STATE]
            if stored_meta is None:
                raise FileNotFoundError(f"the metadata of item {_STATE!r} is missing")
            stored = {
                path: (tuple(m.shape), np.dtype(m.dtype))
                for path, m in _flat(stored_meta.tree)
            }
        except Exception as e:
            raise _Unusable(f"its state metadata cannot be read ({_reason(e)})") from e
        expected = {path: _stored_form(leaf) for path, leaf in _flat(target)}
        self._check_match(step, stored, expected)
        abstract = jax.tree_util.tree_map(_abstract, target)
        args = ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(abstract)})
        try:
            state = self._manager.restore(step, args=args)[_STATE]
        except Exception as e:
            raise _Unusable(f"its array data cannot be read ({_reason(e)})") from e
        _verify(state, meta.pop(_DIGESTS, None))
        return state, meta

    def _check_match(self, step: int, stored: dict, expected: dict) -> None:
        problems = []
        for path in sorted(set(stored) & set(expected)):
            (s_shape, s_dtype), (e_shape, e_dtype) = stored[path], expected[path]
            if s_shape != e_shape:
                problems.append(
                    f"parameter {path} has shape {_shape(s_shape)} in the checkpoint but "
                    f"{_shape(e_shape)} in the model"
                )
            elif s_dtype != e_dtype:
                problems.append(
                    f"parameter {path} has dtype {s_dtype} in the checkpoint but {e_dtype} "
                    f"in the model"
                )
        for path in sorted(set(expected) - set(stored)):
            problems.append(
                f"parameter {path} {_shape(expected[path][0])} is in the model but not in "
                f"the checkpoint"
            )
        for path in sorted(set(stored) - set(expected)):
            problems.append(
                f"parameter {path} {_shape(stored[path][0])} is in the checkpoint but not in "
                f"the model"
            )
        if problems:
            more = len(problems) - _MAX_LISTED
            listed = "; ".join(problems[:_MAX_LISTED]) + (
                f"; and {more} more" if more > 0 else ""
            )
            raise CheckpointError(
                f"checkpoint step {step}: {listed}. The checkpoint in {self.directory} was "
                f"written for a different model or optimiser; restore with the config it was "
                f"saved with, or use a fresh workdir"
            )


def _verify(state: PyTree, digests: Any) -> None:
    """Raises _Unusable unless `state` matches `digests` (when saved) and is finite."""
    if digests is not None:
        if not isinstance(digests, Mapping):
            raise _Unusable(f"its meta entry {_DIGESTS!r} is not a JSON object")
        actual = _digests(state)
        differ = [p for p in actual if p in digests and digests[p] != actual[p]]
        if differ:
            raise _Unusable(
                f"the data of {_listing(differ)} does not match the sha256 digest "
                f"saved with it: its files were changed or damaged after the save"
            )
    bad = nonfinite_paths(state)
    if bad:
        raise _Unusable(f"NaN or Inf values in {_listing(bad)}")


def _digests(state: PyTree) -> dict[str, str]:
    """sha256 of each leaf's bytes (typed keys: their key data), by leaf path.

    A leaf spread over several processes' devices without a full copy on this one is
    left out.
    """
    out = {}
    for path, leaf in _flat(state):
        if _is_key(leaf):
            leaf = jax.random.key_data(leaf)
        if isinstance(leaf, jax.Array) and not (
            leaf.is_fully_addressable or leaf.is_fully_replicated
        ):
            continue
        data = np.ascontiguousarray(_host(leaf)).reshape(-1).view(np.uint8)
        out[path] = hashlib.sha256(data).hexdigest()
    return out


def _host(x: Any) -> np.ndarray:
    """This process's full copy of an array (a replicated global array included)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(x.addressable_data(0))
    return np.asarray(x)


def _reason(error: BaseException) -> str:
    """The readable core of an orbax / tensorstore error: its innermost cause's first
    line, without the JSON spec and object reprs tensorstore appends."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    if isinstance(error, json.JSONDecodeError):
        text = f"not valid JSON: {text}"
    for cut in (
        " [tensorstore_spec",
        " See full TensorStore details",
        " <bound method",
    ):
        text = text.split(cut)[0]
    return text[:300]


def _listing(paths: list[str]) -> str:
    noun = "parameter" if len(paths) == 1 else "parameters"
    return f"{noun} {listing(paths, _MAX_LISTED)}"


@contextlib.contextmanager
def _quiet_absl(quiet: bool):
    """Silences absl's warnings (orbax logs through absl) inside the block."""
    logger = logging.getLogger("absl")
    level = logger.level
    if quiet:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class FailedWriteNoise(logging.Filter):
    """Drops what orbax's writer tasks print when a full disk stopped a save.

    A save's other writer tasks (on TensorStore) go on failing after the first: each logs
    the same full disk with a traceback, through absl and asyncio, or prints one of the
    event loop it is handed back to, which is closed by then. `Checkpointer` reports the
    full disk once (`DiskFull`). `install` filters those, and only those, until `remove`;
    used around each save, and by the CLI for the rest of a process whose save failed.
    """

    def install(self) -> FailedWriteNoise:
        for name in ("absl", "asyncio"):
            logging.getLogger(name).addFilter(self)
        self._hooks = sys.excepthook, sys.unraisablehook
        excepthook, unraisablehook = self._hooks

        def quiet_excepthook(kind, error, tb):
            if not _abandoned_write(error):
                excepthook(kind, error, tb)

        def quiet_unraisablehook(info):
            if not _abandoned_write(info.exc_value):
                unraisablehook(info)

        sys.excepthook, sys.unraisablehook = quiet_excepthook, quiet_unraisablehook
        return self

    def remove(self) -> None:
        for name in ("absl", "asyncio"):
            logging.getLogger(name).removeFilter(self)
        sys.excepthook, sys.unraisablehook = self._hooks

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (
            _abandoned_write(error) or is_disk_full(Exception(record.getMessage()))
        )


def _abandoned_write(error: BaseException | None) -> bool:
    return error is not None and (
        is_disk_full(error) or "Event loop is closed" in str(error)
    )


def _warn(message: str) -> None:
    """One line on stderr (from process 0 only, in a multi-process run)."""
    if jax.process_index() == 0:
        print(f"warning: {message}", file=sys.stderr, flush=True)


def _path_str(path: tuple) -> str:
    """`conv_0/kernel` for a JAX key path (nnx Variables' trailing `value` dropped)."""
    return jax.tree_util.keystr(path, simple=True, separator="/").removesuffix("/value")


def _flat(tree: PyTree) -> list[tuple[str, Any]]:
    return [
        (_path_str(p), leaf)
        for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    ]


def _is_key(leaf: Any) -> bool:
    return jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key)


def _stored_form(leaf: Any) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) as orbax stores the leaf: typed keys become their uint32 key data."""
    if _is_key(leaf):
        data = jax.eval_shape(
            jax.random.key_data, jax.ShapeDtypeStruct(leaf.shape, leaf.dtype)
        )
        return tuple(data.shape), np.dtype(data.dtype)
    return tuple(np.shape(leaf)), np.dtype(
        leaf.dtype if hasattr(leaf, "dtype") else np.result_type(leaf)
    )


def _abstract(leaf: Any) -> jax.ShapeDtypeStruct:
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return leaf
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
        return jax.ShapeDtypeStruct(
            leaf.shape, leaf.dtype, sharding=getattr(leaf, "sharding", None)
        )
    value = np.asarray(leaf)
    return jax.ShapeDtypeStruct(value.shape, value.dtype)


def _shape(shape: tuple[int, ...]) -> str:
    """(3,3,1,32) — compact, as in the error messages users grep for."""
    return "(" + ",".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"
