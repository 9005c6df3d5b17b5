"""fit() as named phases: open the run, load, build the state, run the epochs, finish.

Resume is exact: the data order of an epoch is a function of (seed, epoch), augmentation
keys of (seed, step), and dropout draws from the model's own RNG state, which is part of
every checkpoint. Checkpoints are taken at every epoch end, every `train.checkpoint_steps`
steps within an epoch when set, and when SIGTERM / Ctrl-C stops training (`preemption`);
a mid-epoch checkpoint holds the epoch's step and its running sums. A run killed at any
point resumes from the latest checkpoint, repeats what came after it, and ends
bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import pathlib
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx

from jaxcnn import (
    checkpoint,
    cputune,
    data,
    distributed,
    errors,
    footprint,
    memory,
    metrics,
    models,
    optim,
    rundir,
    shapes,
    transfer,
)
from jaxcnn import spec as spec_lib
from jaxcnn.errors import DataError, JaxcnnError, TrainingError
from jaxcnn.spec import ModelSpec, RunConfig
from jaxcnn.train import batches, preemption, sharding, step


@dataclasses.dataclass
class FitResult:
    """What fit() returns: the summary.json fields plus the trained model."""

    summary: dict[str, Any]
    model: nnx.Module
    config: RunConfig
    spec: ModelSpec
    workdir: pathlib.Path
    history: list[dict[str, Any]]

    def __getattr__(self, name: str) -> Any:
        summary = self.__dict__.get("summary", {})
        if name in summary:
            return summary[name]
        raise AttributeError(name)


@dataclasses.dataclass
class _Run:
    """The fixed pieces of one fit() call, filled in by the phases."""

    config: RunConfig
    run_dir: rundir.RunDir
    resume: bool
    primary: bool
    quiet: bool
    lock: rundir.WriterLock | None  # process 0's hold on the workdir
    dataset: data.Dataset | None = None
    spec: ModelSpec | None = None
    source: batches.BatchSource | None = None


def resolve_spec(config: RunConfig, num_classes: int | None = None) -> ModelSpec:
    """The model spec of a run; presets and families take the dataset's class count."""
    args = dict(config.model.args)
    name = config.model.name
    if (
        num_classes is not None
        and "num_classes" not in args
        and config.model.spec is None
        and (name in models.PRESETS or name in models.FAMILIES)
    ):
        args["num_classes"] = num_classes
    spec = models.load_spec(dataclasses.replace(config.model, args=args))
    if num_classes is not None and spec.num_classes != num_classes:
        raise DataError(
            f"model {spec.name!r} has num_classes={spec.num_classes} but dataset "
            f"{config.data.dataset!r} has {num_classes} classes; set num_classes = "
            f"{num_classes} in the spec (or --classes/--set model.num_classes={num_classes})"
        )
    return spec


# --------------------------------------------------------------------------- fit
def fit(
    config: RunConfig | None = None,
    workdir: str | os.PathLike | None = None,
    *,
    restart: bool = False,
    quiet: bool = False,
    dataset: data.Dataset | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> FitResult:
    """Trains `config` in `workdir`, resuming from its checkpoints when they exist.

    Args:
      config: the run; defaults to the embedded digits run.
      workdir: where config.json, metrics.jsonl, summary.json, checkpoints/ and
        tensorboard/ go. Defaults to runs/<model>-<dataset>.
      restart: discard checkpoints and metrics already in `workdir`.
      quiet: no progress output.
      dataset: an already loaded dataset (sweeps reuse one across trials).
      on_epoch: called with each epoch's metrics record (sweeps prune on it); may raise
        to stop the run after its checkpoint was written.

    Returns:
      FitResult with the summary fields, the final model and the metrics history.
    """
    config = config or RunConfig()
    workdir = workdir or rundir.default_workdir(config)
    config, note = transfer.inherit_normalization(config)
    if note is not None:
        dataset = None  # one loaded for the config as given is not normalised so
        if not quiet and distributed.is_primary():
            print(note)
    step.enable_compilation_cache()
    run = _open_run(config, rundir.RunDir(workdir), restart, quiet)
    with run.lock or contextlib.nullcontext():
        _load(run, dataset)
        steps, schedule = _build_state(run)
        with checkpoint.Checkpointer(
            run.run_dir.checkpoints, keep=config.train.keep_checkpoints
        ) as ckpt:
            history, stopped_early = _train(run, steps, schedule, ckpt, on_epoch)
            final_model = steps.model()
            summary = _finish(run, steps, ckpt, history, stopped_early)
    return FitResult(summary, final_model, config, run.spec, run.run_dir.path, history)


def _open_run(
    config: RunConfig, run_dir: rundir.RunDir, restart: bool, quiet: bool
) -> _Run:
    """Decides between resuming and starting afresh, on process 0 for every process.

    Several processes share one workdir (a shared filesystem): process 0 takes the
    directory's writer lock (refused while another training process holds it), decides
    and writes; the others follow its decision.
    """
    primary = distributed.is_primary()
    lock = None
    with contextlib.ExitStack() as held:  # the writer lock, until fit holds it
        try:
            if primary:
                run_dir.prepare()
                lock = held.enter_context(run_dir.lock_for_writing())
            resume = run_dir.resumes(config, restart) if primary else False
        except JaxcnnError:
            held.close()
            distributed.broadcast_from_primary(-1)  # the others stop too, not wait
            raise
        status = distributed.broadcast_from_primary(int(resume))
        if status < 0:
            raise JaxcnnError(
                f"process 0 refused workdir {run_dir.path}; its error message says why"
            )
        if primary and not status:
            run_dir.clear()
        distributed.barrier("jaxcnn:workdir")
        held.pop_all()
    return _Run(config, run_dir, bool(status), primary, quiet or not primary, lock)


def _load(run: _Run, dataset: data.Dataset | None) -> None:
    """Loads the dataset, resolves the spec against it, records both in config.json."""
    config = run.config
    if dataset is None:
        # The class count does not change the input shape, which the data must match.
        input_shape = resolve_spec(config).input_shape
        dataset = data.load_dataset(config.data, input_shape=input_shape)
    spec = resolve_spec(config, dataset.num_classes)
    if dataset.image_shape != spec.input_shape:
        raise DataError(
            f"dataset {dataset.name!r} yields {dataset.image_shape} images but the model "
            f"takes {spec.input_shape}"
        )
    step.check_augment_crop(config.data.augment_crop, spec.input_shape)
    if run.resume:  # the checkpoints belong to this model, trained on these files
        run.run_dir.check_spec(spec)  # e.g. a spec file edited in place
        data.check_fingerprint(run.run_dir.read().dataset, dataset)
    if run.primary:
        run.run_dir.write_config(config, spec, dataset_record(dataset))
    if not run.quiet:
        for note in dataset.notes:  # conversions, skipped files: also in config.json
            print(f"data: {note}")
    run.dataset, run.spec = dataset, spec
    run.source = batches.source_for(
        dataset.train, config.train, distributed.process_count()
    )


def _build_state(run: _Run) -> tuple[step.Steps, Callable]:
    """Model, optimiser (transfer and freezing included) and their compiled steps."""
    cfg = run.config.train
    summary, limit = shapes.infer(run.spec), memory.device_memory_bytes()
    footprint.check_fits(  # refuse what cannot fit before anything is allocated
        summary,
        cfg.batch_size // jax.device_count(),
        limit,
        optimizer_slots=spec_lib.OPTIMIZER_SLOTS[run.config.optim.optimizer],
    )
    evaluated = batches.eval_batch_size(cfg, run.dataset.val, run.dataset.test)
    footprint.check_eval_fits(summary, evaluated // jax.device_count(), limit)
    model = models.build_run_model(run.spec, cfg)
    if cfg.init_from and not run.resume:
        for note in transfer.init_from_run(
            model, run.spec, cfg.init_from, new_head=cfg.new_head
        ):
            if note.startswith("warning:") and run.primary:
                print(note, file=sys.stderr)
            elif not run.quiet:
                print(note)
    steps_per_epoch = run.source.steps_per_epoch
    build = functools.partial(
        optim.make_optimizer,
        run.config.optim,
        steps_per_epoch=steps_per_epoch,
        epochs=cfg.epochs,
        trainable=transfer.trainable_mask(model, run.spec, cfg.freeze),
    )
    tx, schedule = build()
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    k = cfg.steps_per_dispatch or step.default_steps_per_dispatch(jax.default_backend())
    steps = step.Steps(  # the optimiser's numbers traced: one executable for any lr
        model,
        optimizer,
        run.config,
        min(k, steps_per_epoch),
        tx_from=lambda values: build(values=values)[0],
        values=optim.traced_values(run.config.optim),
    )
    if not run.quiet:
        steps.on_compile = _say_compiling
    return steps, schedule


def _say_compiling(what: str, done: tuple[float, bool] | None) -> None:
    """`compiling the train step ... 2.9 s` on one line of stderr, where the epochs'
    progress goes."""
    if done is None:
        print(f"compiling {what} ...", end="", file=sys.stderr, flush=True)
    else:
        seconds, hit = done
        cached = " (from the persistent cache)" if hit else ""
        print(f" {seconds:.1f} s{cached}", file=sys.stderr, flush=True)


@dataclasses.dataclass
class _Position:
    """Where training stands: completed epochs, and steps into the next one."""

    epoch: int = 0
    best_val: float = -1.0
    done: int = 0  # steps of epoch `epoch` already run (a mid-epoch checkpoint)
    sums: list[float] | None = None  # their running [loss sum, correct, examples]
    record: dict | None = None  # epoch `epoch`'s metrics record, kept in the checkpoint


def _restore(run: _Run, steps: step.Steps, ckpt) -> _Position:
    """Loads the latest checkpoint into `steps` when resuming; where it stands."""
    if not run.resume:
        return _Position()
    restored = ckpt.restore("latest", nnx.to_pure_dict(steps.state))
    meta = restored.meta
    rundir.check_identity(  # not a checkpoint copied in from another run
        meta,
        run.config,
        run.spec,
        where=f"checkpoint step {restored.step} in {run.run_dir.checkpoints}",
        missing_is_error=True,
    )
    nnx.replace_by_pure_dict(steps.state, restored.state)
    return _Position(
        meta["epoch"],
        meta.get("best_val_accuracy", -1.0),
        meta.get("epoch_step", 0),
        meta.get("epoch_sums"),
        meta.get("epoch_record"),
    )


@dataclasses.dataclass
class _Loop:
    """What the epochs share: the run, its compiled steps and where results go."""

    run: _Run
    steps: step.Steps
    schedule: Callable
    ckpt: checkpoint.Checkpointer
    stop: preemption.Stop
    best_val: float = -1.0
    last_record: dict | None = None  # the last completed epoch's metrics record


def _train(run: _Run, steps, schedule, ckpt, on_epoch) -> tuple[list[dict], bool]:
    """The epochs: train, evaluate, log, checkpoint; returns (history, stopped early).

    The epoch's record is logged before its checkpoint is committed: a kill between
    the two resumes from the previous checkpoint and logs the epoch again, so no record
    is lost and none is doubled.
    """
    cfg = run.config.train
    position = _restore(run, steps, ckpt)  # every process restores
    log = rundir.MetricsLog(
        run.run_dir.path,
        resume_epoch=position.epoch,
        resume_record=position.record,
        write=run.primary,
    )
    history = log.read()
    run.source.place(steps.layout)
    cputune.release_free_memory()  # what loading and compiling freed goes back
    since_best = _epochs_since_best(history)
    with preemption.Stop.on_signals(distributed.process_count() == 1) as stop:
        loop = _Loop(run, steps, schedule, ckpt, stop, position.best_val)
        loop.last_record = history[-1] if history else None
        try:
            for epoch in range(position.epoch, cfg.epochs):
                if cfg.patience and since_best >= cfg.patience:
                    return history, True
                record = _epoch(loop, epoch, position, history)
                # weights can overflow while the loss (computed before the update)
                # is still finite: never log or keep such an epoch as good
                ckpt.check_finite(nnx.to_pure_dict(steps.state), epoch=epoch + 1)
                position = _Position(epoch + 1)
                if record["val_accuracy"] > loop.best_val:
                    loop.best_val, since_best = record["val_accuracy"], 0
                else:
                    since_best += 1
                log.log_epoch(record)
                history.append(record)
                loop.last_record = record
                if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs:
                    _save(loop, record["step"], epoch + 1, record["val_accuracy"])
                if on_epoch is not None:
                    on_epoch(record)
        finally:
            ckpt.wait()
            log.close()
    return history, False


def _save(loop: _Loop, global_step: int, epoch: int, val_accuracy=None, **partial):
    """Checkpoints the state; `partial` (epoch_step, epoch_sums) marks a mid-epoch one."""
    loop.ckpt.save(
        global_step,
        nnx.to_pure_dict(loop.steps.state),
        metrics={} if val_accuracy is None else {"val_accuracy": val_accuracy},
        meta={
            "epoch": epoch,
            "best_val_accuracy": loop.best_val,
            rundir.IDENTITY: rundir.run_identity(loop.run.config, loop.run.spec),
            # metrics.jsonl's record of `epoch`: a resume rebuilds it from here when
            # the log lost its last line
            "epoch_record": loop.last_record,
            **partial,
        },
        force=True,
    )


def _epoch(loop: _Loop, epoch: int, position: _Position, history) -> dict:
    """One epoch of training (from `position.done` steps in) and its validation record."""
    run, steps, cfg = loop.run, loop.steps, loop.run.config.train
    per_epoch = run.source.steps_per_epoch
    progress = metrics.Progress(
        per_epoch, epoch=epoch + 1, epochs=cfg.epochs, quiet=run.quiet
    )
    t0, compile_before = time.perf_counter(), steps.compile_seconds
    step0, done = epoch * per_epoch, position.done
    first = epoch == position.epoch
    sums = None if position.sums is None else np.asarray(position.sums, np.float32)
    for images, labels, indices, n in run.source.epoch(steps, epoch, first, done):
        sums = steps.train(images, labels, indices, step0 + done, n, sums)
        done += n
        if progress.wants_update(done):
            _report(progress, done, sums, t0, steps.compile_seconds - compile_before)
        _checkpoint_within(loop, epoch, done, n, sums)
    loss, correct, count = (float(v) for v in sharding.host(sums))
    seconds = time.perf_counter() - t0 - (steps.compile_seconds - compile_before)
    if not math.isfinite(loss):
        last = history[-1]["epoch"] if history else epoch
        raise TrainingError(
            f"the training loss became {loss} in epoch {epoch + 1}; the last good "
            f"checkpoint (epoch {last}) is kept in {run.run_dir.checkpoints}. Lower the "
            f"learning rate (now optim.lr={run.config.optim.lr}) or set optim.clip_norm=1.0"
        )
    (val_loss, val_correct, val_count), _, _ = steps.evaluate(
        run.dataset.val.batches(
            batches.eval_batch_size(cfg, run.dataset.val, run.dataset.test)
        )
    )
    record = {
        "epoch": epoch + 1,
        "step": step0 + per_epoch,
        "train_loss": loss / count,
        "train_accuracy": correct / count,
        "val_loss": val_loss / val_count,
        "val_accuracy": val_correct / val_count,
        "lr": float(loop.schedule(step0 + per_epoch)),
        "epoch_seconds": time.perf_counter()
        - t0
        - (steps.compile_seconds - compile_before),
        "images_per_second": count / max(seconds, 1e-9),
    }
    progress.close(metrics.format_epoch(record, cfg.epochs))
    return record


def _checkpoint_within(loop: _Loop, epoch: int, done: int, n: int, sums) -> None:
    """After a call: a mid-epoch checkpoint every `train.checkpoint_steps` steps, and on
    SIGTERM/SIGINT one checkpoint and `Interrupted`."""
    every = loop.run.config.train.checkpoint_steps
    due = every and done // every > (done - n) // every
    if done >= loop.run.source.steps_per_epoch or not (due or loop.stop.signal):
        return  # the epoch's end has its own checkpoint
    global_step = epoch * loop.run.source.steps_per_epoch + done
    epoch_sums = [float(v) for v in sharding.host(sums)]
    _save(loop, global_step, epoch, epoch_step=done, epoch_sums=epoch_sums)
    if loop.stop.signal:
        loop.ckpt.wait()
        raise errors.Interrupted(
            f"{loop.stop.name} received: stopped at step {done} of epoch {epoch + 1} "
            f"after saving a checkpoint (step {global_step}) in "
            f"{loop.run.run_dir.checkpoints}; run the same command again to resume",
            loop.stop.signal,
        )


def _finish(run: _Run, steps, ckpt, history, stopped_early: bool) -> dict[str, Any]:
    """Test metrics of the best-by-validation checkpoint (as `eval` reports), summary."""
    best_step = ckpt.best_step()
    if best_step is not None and best_step != ckpt.latest_step():
        best = ckpt.restore("best", nnx.to_pure_dict(steps.state))
        nnx.replace_by_pure_dict(steps.state, best.state)
        best_step = best.step  # another one when that checkpoint proved unusable
    (test_loss, test_correct, test_count), _, _ = steps.evaluate(
        run.dataset.test.batches(
            batches.eval_batch_size(run.config.train, run.dataset.val, run.dataset.test)
        )
    )
    summary = summarize(
        run.spec,
        run.dataset,
        history,
        test=(test_loss, test_correct, test_count),
        best_epoch=ckpt.read_meta(best_step)["epoch"]
        if best_step is not None
        else None,
        compile_seconds=steps.compile_seconds,
    )
    summary.update(
        stopped_early=stopped_early,
        executables=steps.num_compiled,
        compile_cache_hits=steps.cache_hits,
        steps_per_dispatch=steps.k,
        num_processes=distributed.process_count(),
    )
    if run.primary:
        run.run_dir.write_summary(summary)
    if not run.quiet:
        print(
            f"test accuracy {summary['test_accuracy']:.4f} (best val "
            f"{summary['best_val_accuracy']:.4f} at epoch {summary['best_epoch']}); "
            f"run files in {run.run_dir.path}"
        )
    return summary


def summarize(
    spec: ModelSpec,
    dataset: data.Dataset,
    history: list[dict],
    *,
    test: tuple[float, float, float],
    best_epoch: int | None,
    compile_seconds: float,
) -> dict[str, Any]:
    """The summary.json fields of a finished run."""
    static = shapes.infer(spec)
    test_loss, test_correct, test_count = test
    speeds = [r["images_per_second"] for r in history]
    return {
        "test_accuracy": test_correct / test_count,
        "test_loss": test_loss / test_count,
        "best_val_accuracy": max((r["val_accuracy"] for r in history), default=-1.0),
        "best_epoch": best_epoch,
        "epochs": len(history),
        "total_params": static.total_params,
        "total_flops": static.total_flops,
        "train_seconds": sum(r.get("epoch_seconds", 0.0) for r in history),
        "compile_seconds": compile_seconds,
        "images_per_second": float(np.median(speeds)) if speeds else 0.0,
        "dataset": dataset.name,
        "model": spec.name,
        "num_devices": jax.device_count(),
        "backend": jax.default_backend(),
    }


def dataset_record(ds: data.Dataset) -> dict[str, Any]:
    """What config.json records of a dataset (predict and eval read it back)."""
    return {
        "name": ds.name,
        "num_classes": ds.num_classes,
        "class_names": list(ds.class_names),
        "image_shape": list(ds.image_shape),
        "mean": None if ds.mean is None else np.asarray(ds.mean).tolist(),
        "std": None if ds.std is None else np.asarray(ds.std).tolist(),
        "channels": ds.channels,
        "train_examples": ds.train.num_examples,
        "val_examples": ds.val.num_examples,
        "test_examples": ds.test.num_examples,
        "notes": list(ds.notes),
        "fingerprint": ds.fingerprint,
        # a folder dataset's absolute, resolved path: eval reads the same folder from
        # any working directory
        "folder": (
            None
            if ds.fingerprint is None
            else os.path.realpath(os.path.expanduser(ds.name))
        ),
    }


def _epochs_since_best(history: list[dict]) -> int:
    best, since = -1.0, 0
    for record in history:
        if record["val_accuracy"] > best:
            best, since = record["val_accuracy"], 0
        else:
            since += 1
    return since


def _report(progress, done, sums, t0, compile_s) -> None:
    """Updates the progress bar (reading `sums` syncs the device)."""
    loss, correct, count = (float(v) for v in sharding.host(sums))
    elapsed = max(time.perf_counter() - t0 - compile_s, 1e-9)
    progress.update(
        done,
        loss=loss / max(count, 1),
        accuracy=correct / max(count, 1),
        images_per_second=count / elapsed,
    )
