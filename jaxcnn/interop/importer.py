"""`import_weights`: another framework's weight file -> an ordinary jaxcnn run directory.

The directory holds what a trained run's does for `jaxcnn eval`, `predict`, `viz` and
`train --init-from ... --freeze ...`: config.json (the run config naming the preset, the
resolved spec, a dataset record with the source's preprocessing and the ImageNet class
names) and a checkpoint written through jaxcnn.checkpoint (step 0, epoch 0, the
optimiser "sgd", which keeps no per-parameter state).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

from jaxcnn import checkpoint, models, rundir, transfer
from jaxcnn.errors import JaxcnnError
from jaxcnn.interop import download, imagenet, mapping, readers
from jaxcnn.spec import (
    DataConfig,
    Kernels,
    ModelConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
)


@dataclasses.dataclass(frozen=True)
class Imported:
    """What `import_weights` wrote: the run directory, its config and how much."""

    workdir: pathlib.Path
    config: RunConfig
    source_file: pathlib.Path
    source: str
    arrays: int  # weight arrays imported (batch-norm statistics included)
    values: int  # numbers in them
    left_out: tuple[str, ...] = ()  # the file's auxiliary-head tensors, not imported


def import_weights(
    file: str | os.PathLike,
    arch: str,
    workdir: str | os.PathLike,
    *,
    source: str | None = None,
    kernels: Kernels = "auto",
    input_shape: tuple[int, int, int] | None = None,
) -> Imported:
    """Reads a weight file of `arch` and writes it as a jaxcnn run directory.

    Args:
      file: a torchvision/PyTorch state dict (.pth), a timm .safetensors file or a
        Keras weights file (.weights.h5 / .h5).
      arch: the preset it is an instance of (`mapping.LAYOUTS` lists each source's).
      workdir: the run directory to write; must not hold a run already.
      source: "torchvision", "timm" or "keras"; default: from the file's suffix.
      kernels: the run's `train.kernels` ("auto", "xla", "fast").
      input_shape: (H, W, C) to build the preset for instead of its published input
        (224x224x3; 299x299x3 for Inception v3), e.g. to fine-tune on small images;
        the networks that end in a global pool take the same weights at any size.

    Returns:
      Imported: the run directory and what went in.

    Raises:
      CheckpointError: the file is unreadable or does not match `arch` (naming the
        first mismatching tensor and both shapes, missing and unexpected tensors).
      JaxcnnError: unknown architecture or source, a missing library, a workdir that
        holds a run.
    """
    file = pathlib.Path(file)
    source = source or readers.guess_source(file)
    if source not in readers.SOURCES:
        raise JaxcnnError(
            f"unknown weight source {source!r}; sources are {', '.join(readers.SOURCES)}"
        )
    if arch not in models.PRESETS:
        raise JaxcnnError(
            f"unknown architecture {arch!r}; jaxcnn imports {mapping.supported()}"
        )
    if (arch, source) not in mapping.LAYOUTS:
        raise JaxcnnError(
            f"no {source} layout for architecture {arch!r}; jaxcnn imports "
            f"{mapping.supported()}"
        )
    run_dir = rundir.RunDir(workdir)
    _check_empty(run_dir)
    preprocessing = imagenet.preprocessing(arch, source)
    args = dict(mapping.PRESET_ARGS.get((arch, source), {}))
    if input_shape is not None:
        args["input_shape"] = list(input_shape)
    config = RunConfig(
        model=ModelConfig(name=arch, args=args),
        data=DataConfig(dataset="imagenet2012", test_split="validation"),
        optim=OptimConfig(optimizer="sgd"),
        train=TrainConfig(epochs=1, kernels=kernels),
    )
    spec = models.load_spec(config.model)
    tensors, left_out = mapping.prepare(
        arch, source, readers.read_weights(file, source)
    )
    shapes_ = _weight_shapes(spec, config.train)
    entries = mapping.entries_for(spec, arch, source, shapes_, tensors)
    arrays = mapping.convert(
        entries, tensors, shapes_, file=str(file), arch=arch, source=source
    )
    del tensors
    model, optimizer = transfer.build_run_state(config, spec)
    _assign(model, arrays)
    run_dir.prepare()
    record = _dataset_record(spec, file, source, preprocessing, left_out)
    run_dir.write_config(config, spec, record)
    _save(run_dir, model, optimizer, file, source, rundir.run_identity(config, spec))
    return Imported(
        run_dir.path,
        config,
        file,
        source,
        len(arrays),
        sum(int(a.size) for a in arrays.values()),
        tuple(left_out),
    )


def import_pretrained(
    arch: str,
    source: str,
    workdir: str | os.PathLike,
    *,
    cache: str | os.PathLike | None = None,
    kernels: Kernels = "auto",
    input_shape: tuple[int, int, int] | None = None,
) -> Imported:
    """`import_weights` of the published file (downloaded and hash-checked once, then
    taken from the cache; see jaxcnn.interop.download)."""
    if arch not in models.PRESETS:
        raise JaxcnnError(
            f"unknown architecture {arch!r}; jaxcnn imports {mapping.supported()}"
        )
    run_dir = rundir.RunDir(workdir)
    _check_empty(run_dir)  # before a download of hundreds of MB
    path = download.pretrained_file(arch, source, cache=cache)
    return import_weights(
        path, arch, workdir, source=source, kernels=kernels, input_shape=input_shape
    )


def _check_empty(run_dir: rundir.RunDir) -> None:
    if run_dir.config_file.exists() or run_dir.has_checkpoint():
        raise JaxcnnError(
            f"workdir {run_dir.path} holds a run already; import into a new --workdir"
        )


def _weight_shapes(spec, train: TrainConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of the parameters and batch-norm statistics, without allocating them."""
    from flax import nnx

    abstract = nnx.eval_shape(lambda: models.build_run_model(spec, train))
    state = nnx.state(abstract, nnx.Any(nnx.Param, nnx.BatchStat))
    return {
        "/".join(map(str, path)): tuple(leaf.shape)
        for path, leaf in nnx.to_flat_state(state)
    }


def _assign(model, arrays: dict[str, Any]) -> None:
    import jax.numpy as jnp
    from flax import nnx

    state = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
    for path, var in nnx.to_flat_state(state):
        var.set_value(jnp.asarray(arrays["/".join(map(str, path))]))


def _dataset_record(spec, file, source, preprocessing, left_out) -> dict[str, Any]:
    """config.json's dataset record: what predict needs to prepare an image."""
    notes = [f"weights imported from {file} ({source})"]
    if left_out:
        heads = sorted({name.split(".")[0] for name in left_out})
        notes.append(
            f"left out {len(left_out)} tensors of the auxiliary heads "
            f"({', '.join(heads)}), which only train"
        )
    return {
        "name": "imagenet2012",
        "num_classes": spec.num_classes,
        "class_names": list(imagenet.class_names()),
        "image_shape": list(spec.input_shape),
        **preprocessing,
        "notes": notes,
        "fingerprint": None,
    }


def _save(run_dir, model, optimizer, file, source, identity) -> None:
    from flax import nnx

    _, state = nnx.split((model, optimizer))
    with checkpoint.Checkpointer(run_dir.checkpoints) as ckpt:
        ckpt.save(
            0,
            nnx.to_pure_dict(state),
            metrics={},
            meta={
                "epoch": 0,
                "best_val_accuracy": -1.0,
                "imported_from": str(file),
                "source": source,
                # which run the checkpoint belongs to, as training records it
                rundir.IDENTITY: identity,
            },
            force=True,
        )
