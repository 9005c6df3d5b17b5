"""Checkpoints of a training run (the only module that imports orbax).

A `Checkpointer` wraps an orbax `CheckpointManager` whose step directories hold three items:

- ``state``: the pytree passed to `Checkpointer.save` (nested dicts of arrays, typed PRNG
  key arrays included: orbax stores their key data and `restore` wraps them again with
  the implementation of the target's keys),
- ``meta``: a JSON object (epoch, resolved run config, ...),
- ``metrics``: the metrics given to `save`; ``val_accuracy`` ranks the checkpoints.

orbax writes each step into a temporary directory and renames it when complete, so a
process killed in the middle of a save leaves the previous checkpoints intact (the
unfinished temporary directory is removed the next time a `Checkpointer` opens the
directory).

Restores are checked before orbax reads any array: the stored tree (paths, shapes,
dtypes) must match the target exactly, otherwise a `CheckpointError` names the first
mismatching paths and their shapes.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any, Literal

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocp_managers

from jaxcnn.errors import CheckpointError

PyTree = Any
StepRef = int | Literal["latest", "best"]

_STATE, _META = "state", "meta"
_MAX_LISTED = 5  # mismatching paths named in one error message


def has_checkpoint(directory: str | os.PathLike) -> bool:
    """True if `directory` holds at least one finalised checkpoint step."""
    path = os.fspath(directory)
    return os.path.isdir(path) and bool(ocp.utils.checkpoint_steps(path))


def _best_value(metrics: Mapping[str, Any] | None) -> float:
    """Ranking key: val_accuracy, with missing or NaN values ranked last."""
    value = (metrics or {}).get("val_accuracy")
    if value is None or math.isnan(float(value)):
        return -math.inf
    return float(value)


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
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        keep: int = 2,
        save_every: int = 1,
        async_save: bool = False,
    ):
        if keep < 1 or save_every < 1:
            raise CheckpointError(
                f"Checkpointer needs keep >= 1 and save_every >= 1, got keep={keep}, "
                f"save_every={save_every}"
            )
        self.directory = os.path.abspath(os.fspath(directory))
        self.keep, self.save_every = keep, save_every
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
            self._manager = ocp.CheckpointManager(
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
        best = self._manager.best_step()
        self._best = (
            _best_value(self._manager.metrics(best)) if best is not None else None
        )

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
          step: the global optimiser step (checkpoint name); must be new.
          state: pytree of arrays, e.g. ``{"model": ..., "optimizer": ...}`` pure dicts.
          metrics: scalar metrics; ``val_accuracy`` selects the best checkpoint.
          meta: JSON-serialisable information returned by `restore` / `read_meta`.
          force: save even when ``save_every`` would skip this epoch.

        Returns:
          True if a checkpoint was written.
        """
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
        if step in self._manager.all_steps():
            raise CheckpointError(
                f"checkpoint step {step} already exists in {self.directory}; restore it to "
                f"resume, or use a fresh directory to start over"
            )
        args = ocp.args.Composite(
            **{_STATE: ocp.args.StandardSave(state), _META: ocp.args.JsonSave(meta)}
        )
        self._manager.save(step, args=args, metrics=metrics, force=True)
        if is_best:
            self._best = value
        return True

    def wait(self) -> None:
        """Blocks until every started save is on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Finishes pending saves and releases the manager."""
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- listing --------------------------------------------------------------------------

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        """The step with the highest ``val_accuracy`` (the latest of equals)."""
        return self._manager.best_step()

    def all_steps(self) -> list[int]:
        self.wait()
        return sorted(self._manager.all_steps())

    def _resolve(self, step: StepRef) -> int:
        steps = self.all_steps()
        if not steps:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        if step == "latest":
            return steps[-1]
        if step == "best":
            return self.best_step()
        if isinstance(step, str) or step not in steps:
            raise CheckpointError(
                f"no checkpoint step {step!r} in {self.directory}; available steps: {steps} "
                f"(or 'latest' / 'best')"
            )
        return int(step)

    # -- restoring ------------------------------------------------------------------------

    def read_meta(self, step: StepRef = "latest") -> dict:
        """The JSON meta saved with `step`."""
        step = self._resolve(step)
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(**{_META: ocp.args.JsonRestore()})
            )
        except Exception as e:  # orbax raises many types for unreadable files
            raise self._corrupt(step, e) from e
        return dict(restored[_META])

    def restore(self, step: StepRef, target: PyTree) -> tuple[PyTree, dict]:
        """Restores checkpoint `step` into the structure of `target`.

        Args:
          step: a step number, ``"latest"`` or ``"best"``.
          target: pytree of arrays or `jax.ShapeDtypeStruct` (e.g. from `nnx.eval_shape`)
            with exactly the saved structure, shapes and dtypes.

        Returns:
          (state, meta): the restored pytree (arrays, typed keys like the target's) and
          the saved meta.

        Raises:
          CheckpointError: no such checkpoint, a structure/shape/dtype mismatch (naming
            the parameter paths and shapes), or unreadable files.
        """
        step = self._resolve(step)
        try:
            stored_meta = self._manager.item_metadata(step)[_STATE]
            if stored_meta is None:
                raise FileNotFoundError(f"the metadata of item {_STATE!r} is missing")
            stored = {
                path: (tuple(m.shape), np.dtype(m.dtype))
                for path, m in _flat(stored_meta.tree)
            }
        except Exception as e:
            raise self._corrupt(step, e) from e
        expected = {path: _stored_form(leaf) for path, leaf in _flat(target)}
        self._check_match(step, stored, expected)
        abstract = jax.tree_util.tree_map(_abstract, target)
        args = ocp.args.Composite(
            **{
                _STATE: ocp.args.StandardRestore(abstract),
                _META: ocp.args.JsonRestore(),
            }
        )
        try:
            restored = self._manager.restore(step, args=args)
        except Exception as e:
            raise self._corrupt(step, e) from e
        return restored[_STATE], dict(restored[_META])

    def _corrupt(self, step: int, error: Exception) -> CheckpointError:
        # tensorstore appends its whole JSON spec to messages; keep the readable part
        text = (str(error).strip().splitlines() or [""])[0].split(" [tensorstore_spec")[
            0
        ]
        return CheckpointError(
            f"checkpoint step {step} in {self.directory} is corrupt or unreadable "
            f"({type(error).__name__}: {text[:300]}); delete {self.directory}/{step} to "
            f"fall back to an earlier checkpoint"
        )

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
