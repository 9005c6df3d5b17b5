"""Transfer learning: start from a finished run's weights and freeze parameters by path.

`train.fit` uses the two public functions when a run config says so::

    transfer.init_from_run(model, spec, cfg.init_from, new_head=cfg.new_head)
    mask = transfer.trainable_mask(model, spec, cfg.freeze)
    tx, schedule = optim.make_optimizer(..., trainable=mask)

Parameters are addressed by their paths (`conv_0/kernel`, `dense_7/bias`,
`residual_3/conv_1/kernel`, as `models.param_paths` lists them); `freeze` patterns are
regular expressions searched (`re.search`) in those paths, so `conv` freezes every
convolution and `^conv_0/` only the first layer. Conv layers whose spec says
`trainable = false` are frozen as well. Frozen parameters get a zero update and no
optimiser state (see optim.py), so they stay bit-identical while training.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxcnn import checkpoint, data, models, optim, rundir
from jaxcnn.errors import CheckpointError, SpecError, listing
from jaxcnn.spec import (
    BranchesSpec,
    ConvSpec,
    DenseSpec,
    ModelSpec,
    Precision,
    ResidualSpec,
    RunConfig,
)

PyTree = Any

_MAX_LISTED = 40  # parameter paths listed in one error message


# --------------------------------------------------------------------------- freezing
def untrainable_prefixes(spec: ModelSpec) -> list[str]:
    """Path prefixes of the conv layers whose spec says trainable=False, e.g. ["conv_0/"]."""
    out: list[str] = []

    def walk(layers, prefix: str) -> None:
        for i, layer in enumerate(layers):
            name = f"{prefix}{layer.type}_{i}"
            if isinstance(layer, ConvSpec) and not layer.trainable:
                out.append(name + "/")
            if isinstance(layer, ResidualSpec):
                walk(layer.layers, name + "/")
            if isinstance(layer, BranchesSpec):
                for b, branch in enumerate(layer.branches):
                    walk(branch, f"{name}/b{b}/")

    walk(spec.layers, "")
    return out


def frozen_paths(
    model: nnx.Module, spec: ModelSpec, patterns: Sequence[str]
) -> list[str]:
    """The parameter paths that `patterns` (and trainable=False conv layers) freeze.

    Raises:
      SpecError: a pattern that is not a valid regular expression, a pattern that
        matches no parameter (the message lists the parameter paths), or a selection
        that freezes every parameter.
    """
    if isinstance(patterns, str):  # a lone string would be iterated letter by letter
        patterns = (patterns,)
    paths = list(models.param_paths(model))
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as e:
            raise SpecError(
                f"train.freeze pattern {pattern!r} is not a valid regular expression "
                f"({e}); patterns are searched in parameter paths such as {paths[0]}"
            ) from None
    for regex in compiled:
        if not any(regex.search(path) for path in paths):
            raise SpecError(
                f"train.freeze pattern {regex.pattern!r} matches no parameter of model "
                f"{spec.name!r}; its parameter paths are: {_listing(paths)}"
            )
    prefixes = tuple(untrainable_prefixes(spec))
    frozen = [
        path
        for path in paths
        if path.startswith(prefixes) or any(regex.search(path) for regex in compiled)
    ]
    if frozen and len(frozen) == len(paths):
        raise SpecError(
            f"train.freeze={list(patterns)} (with trainable=false conv layers) freezes "
            f"all {len(paths)} parameters of model {spec.name!r}; nothing would train. "
            f"Use a narrower pattern, e.g. 'conv' to freeze only the convolutions"
        )
    return frozen


def trainable_mask(
    model: nnx.Module, spec: ModelSpec, patterns: Sequence[str]
) -> PyTree | None:
    """The `trainable=` mask for `optim.make_optimizer`, or None when nothing is frozen.

    Args:
      model: the model whose `nnx.Param`s the optimiser will update.
      spec: its spec (conv layers with `trainable=False` are frozen).
      patterns: regular expressions searched in the parameter paths (`train.freeze`).

    Returns:
      A nested dict with the structure of `nnx.state(model, nnx.Param)` and a bool per
      parameter (False = frozen), or None when no parameter is frozen.

    Raises:
      SpecError: see `frozen_paths`.
    """
    frozen = set(frozen_paths(model, spec, patterns))
    if not frozen:
        return None
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return jax.tree_util.tree_map_with_path(
        lambda path, _: optim._path_str(path) not in frozen, params
    )


# --------------------------------------------------------------------------- runs
def build_run_state(
    config: RunConfig, spec: ModelSpec
) -> tuple[nnx.Module, nnx.Optimizer]:
    """The model and optimiser of a run, built as training builds them (freeze included).

    The checkpoints of a run hold `nnx.to_pure_dict` of `nnx.split((model, optimizer))`
    state, whose optimiser part depends on which parameters were frozen; this rebuilds
    exactly that structure, so it serves as the restore target.
    """
    model = models.build_run_model(spec, config.train)
    mask = trainable_mask(model, spec, config.train.freeze)
    tx, _ = optim.make_optimizer(
        config.optim, steps_per_epoch=1, epochs=config.train.epochs, trainable=mask
    )
    return model, nnx.Optimizer(model, tx, wrt=nnx.Param)


@dataclasses.dataclass
class Restored:
    """A run's model and optimiser with one checkpoint loaded, and what config.json says."""

    model: nnx.Module
    optimizer: nnx.Optimizer
    config: RunConfig
    spec: ModelSpec
    dataset: dict[str, Any]  # the dataset record from config.json (class names, stats)
    step: int
    epoch: int


def restore(
    workdir: str | os.PathLike,
    which: str | int = "best",
    *,
    precision: Precision | None = None,
) -> Restored:
    """Rebuilds a run's model from `workdir` and loads a checkpoint ("best", "latest", step).

    The model is returned in eval mode, computing in `precision` ("float32",
    "bfloat16"; None: the run's `train.precision`). Checkpoints hold float32
    parameters whatever the precision a run trained in.

    For "best" and "latest", an unusable checkpoint is skipped with a warning naming it
    and the step used instead (see `checkpoint.Checkpointer.restore`).

    The directory is only read (another process may be training there). A checkpoint
    must have been written by the run of the directory's config.json (see
    `rundir.check_identity`); one that does not record its run is used with a warning.

    Raises:
      CheckpointError: not a run directory, no such (or no usable) checkpoint, or a
        checkpoint written by another run.
    """
    run_dir = rundir.RunDir(workdir)
    saved = run_dir.read()
    model, optimizer = build_run_state(saved.config, saved.spec)
    if precision is not None:  # the run's float32 layers stay float32
        kept = dict(model.kernel_choice.precision_layers)
        models.set_kernels(model, precision=precision, precision_layers=kept)
    _, state = nnx.split((model, optimizer))
    if not run_dir.has_checkpoint():
        raise CheckpointError(f"no checkpoint in {run_dir.checkpoints}; train first")
    with checkpoint.Checkpointer(run_dir.checkpoints, read_only=True) as ckpt:
        restored, meta, step = ckpt.restore(which, nnx.to_pure_dict(state))
    rundir.check_identity(  # not a checkpoint copied in from another run
        meta,
        saved.config,
        saved.spec,
        where=f"checkpoint step {step} in {run_dir.checkpoints}",
        missing_is_error=False,
    )
    nnx.replace_by_pure_dict(state, restored)
    nnx.update((model, optimizer), state)
    model.eval()
    return Restored(
        model,
        optimizer,
        saved.config,
        saved.spec,
        saved.dataset,
        int(step),
        int(meta["epoch"]),
    )


def head_prefix(spec: ModelSpec) -> str | None:
    """Path prefix of the classifier head (the last top-level dense layer), e.g. "dense_7/"."""
    for i in reversed(range(len(spec.layers))):
        if isinstance(spec.layers[i], DenseSpec):
            return f"dense_{i}/"
    return None


def _weights(model: nnx.Module) -> dict[str, nnx.Variable]:
    """Parameters and batch-norm statistics by path (the variables a transfer copies)."""
    state = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
    return {"/".join(map(str, path)): var for path, var in nnx.to_flat_state(state)}


def init_from_run(
    model: nnx.Module,
    spec: ModelSpec,
    run_dir: str | os.PathLike,
    *,
    new_head: bool,
) -> list[str]:
    """Copies the best checkpoint's weights of a finished run into `model`, in place.

    Every parameter (and batch-norm statistic) of `model` takes the run's value for the
    same path. The classifier head (the last dense layer) keeps `model`'s fresh
    initialisation instead when `new_head` is set or the class counts differ; the rest
    of the network must match the run's exactly (input shape may differ as long as the
    shapes of the weights do not, e.g. an all-convolutional base).

    Args:
      model: the freshly built model of the new run (modified in place).
      spec: its spec.
      run_dir: a finished run's workdir (config.json + checkpoints/).
      new_head: re-initialise the head even when the class counts agree.

    Returns:
      Notes for the user: what was copied, from which checkpoint, what was re-initialised.

    Raises:
      CheckpointError: not a run directory, a run without a checkpoint, different input
        channels, or a weight whose shape (or presence) differs outside the head.
    """
    run_dir = pathlib.Path(run_dir)
    old_spec = _check_source(run_dir, spec)
    source = restore(run_dir, "best")
    old, new = _weights(source.model), _weights(model)
    head = head_prefix(spec)
    replace_head = new_head or old_spec.num_classes != spec.num_classes
    if replace_head and head is None:
        why = (
            "new_head is set"
            if new_head
            else f"the class counts differ: {old_spec.num_classes} vs {spec.num_classes}"
        )
        raise CheckpointError(
            f"train.init_from={run_dir}: model {spec.name!r} has no dense layer to use "
            f"as a new classifier head (needed because {why})"
        )
    kept = [path for path in new if replace_head and path.startswith(head)]
    _check_fit(run_dir, old_spec, spec, old, new, kept, head)
    copied = [path for path in new if path not in kept]
    for path in copied:
        new[path].set_value(jnp.asarray(old[path].get_value()))
    values = sum(int(np.prod(new[path].shape)) for path in copied)
    notes = [
        f"initialised {len(copied)} weight arrays ({values:,} values) from {run_dir} "
        f"(best checkpoint: step {source.step}, epoch {source.epoch})",
        *_source_data_notes(run_dir),
    ]
    if kept:
        reason = (
            "--new-head"
            if new_head
            else f"{old_spec.num_classes} -> {spec.num_classes} classes"
        )
        notes.append(
            f"classifier head {head[:-1]} freshly initialised ({reason}): "
            + ", ".join(kept)
        )
    unused = sorted(set(old) - set(new))
    if unused:
        notes.append(f"weights of the run not used by this model: {_listing(unused)}")
    return notes


def inherit_normalization(config: RunConfig) -> tuple[RunConfig, str | None]:
    """`config` with the input normalisation of its `train.init_from` run filled in.

    A network takes its input normalised as it was trained: an imported network its
    source's statistics and channel order (jaxcnn.interop.imagenet), a jaxcnn run
    trained with `data.standardize` its train split's mean and std. When the run
    `config` starts from recorded such statistics and `config` sets no normalisation of
    its own (`data.standardize` false, `data.mean` unset), they become `config`'s
    `data.mean`, `data.std` and `data.channels`, so the new run trains, evaluates and
    predicts on inputs normalised as the network expects, and config.json says so.

    Returns:
      (config, a note naming the statistics and their run; None when nothing changed).

    Raises:
      CheckpointError: `train.init_from` is not a readable run directory.
    """
    source, data_config = config.train.init_from, config.data
    if not source or data_config.standardize or data_config.mean is not None:
        return config, None
    record = rundir.RunDir(source).read().dataset
    if record.get("mean") is None or record.get("std") is None:
        return config, None
    channels = record.get("channels") or "rgb"
    inherited = dataclasses.replace(
        data_config,
        mean=tuple(float(v) for v in record["mean"]),
        std=tuple(float(v) for v in record["std"]),
        channels=channels,
    )
    note = (
        f"data: the inputs are normalised as {source} takes them ({channels.upper()}, "
        f"mean {_values(inherited.mean)}, std {_values(inherited.std)}); set "
        f"data.standardize or data.mean / data.std to normalise otherwise"
    )
    return dataclasses.replace(config, data=inherited), note


def _source_data_notes(run_dir: pathlib.Path) -> list[str]:
    """A warning when the folder the source run trained on changed or went away since:
    the weights no longer describe those files (TFDS datasets are versioned)."""
    record = rundir.RunDir(run_dir).read().dataset
    folder, saved = record.get("folder"), record.get("fingerprint")
    if not folder or saved is None:
        return []
    now = data.folder_fingerprint(folder)
    if now == saved:
        return []
    what = (
        "is gone" if now is None else "changed (a file was added, removed or modified)"
    )
    return [
        f"warning: the folder {folder} that {run_dir} trained on {what} since; its "
        f"weights are those of the files as they were"
    ]


def _check_source(run_dir: pathlib.Path, spec: ModelSpec) -> ModelSpec:
    """The spec of the run to start from, once it can serve `spec` (channels, checkpoint)."""
    source = rundir.RunDir(run_dir)
    old_spec = source.read().spec
    if old_spec.input_shape[2] != spec.input_shape[2]:
        raise CheckpointError(
            f"train.init_from={run_dir}: that run's model takes "
            f"{old_spec.input_shape[2]} input channel(s) "
            f"({'x'.join(map(str, old_spec.input_shape))}) but this model takes "
            f"{spec.input_shape[2]} ({'x'.join(map(str, spec.input_shape))}); the first "
            f"convolution's weights cannot transfer. Use a dataset with "
            f"{old_spec.input_shape[2]} channel(s) or pre-train on matching images"
        )
    if not source.has_checkpoint():
        raise CheckpointError(
            f"train.init_from={run_dir}: the run has no checkpoint in "
            f"{source.checkpoints}; let it finish at least one epoch first"
        )
    return old_spec


def _check_fit(run_dir, old_spec, spec, old, new, kept, head) -> None:
    """Raises unless every weight outside the head has the run's path and shape."""
    problems = []
    for path, var in new.items():
        if path in kept:
            continue
        if path not in old:
            problems.append(
                f"{path} {tuple(var.shape)} is in this model but not in the run"
            )
        elif tuple(old[path].shape) != tuple(var.shape):
            problems.append(
                f"{path} has shape {tuple(old[path].shape)} in the run but "
                f"{tuple(var.shape)} in this model"
            )
    if not problems:
        return
    hint = (
        f"only the classifier head ({head[:-1]}) may differ, and is re-initialised"
        if head
        else "the architectures must match"
    )
    raise CheckpointError(
        f"train.init_from={run_dir}: the run's model {old_spec.name!r} does not fit "
        f"this model {spec.name!r}: "
        + listing(problems, 5, sep="; ")
        + f". {hint} (when the class counts differ or with --new-head)"
    )


def _values(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def _listing(paths: Sequence[str]) -> str:
    return listing(paths, _MAX_LISTED)
