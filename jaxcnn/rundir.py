"""The run directory: its files, their atomic writes and reads, and the resume decision.

    WORKDIR/config.json     the resolved run config, model spec and dataset record
    WORKDIR/metrics.jsonl   one record per epoch, one fsynced line each
    WORKDIR/summary.json    the final summary
    WORKDIR/checkpoints/    orbax checkpoints (written through checkpoint.py)
    WORKDIR/tensorboard/    TensorBoard event files
    WORKDIR/.writer.lock    who trains here: locked while a `fit` writes the directory

A crash never leaves half a file behind: whole files go through a temporary file in the
same directory that is fsynced and renamed over the target; `metrics.jsonl` grows by one
fsynced line per epoch, and an unfinished last line left by a kill is dropped when the
log is reopened.

One writer per run directory: `RunDir.lock_for_writing` takes an exclusive `flock` on
`.writer.lock` (and writes the holder's pid, host and start time into it) for as long as
a run trains there; a second writer is refused with a message naming the first. The
kernel releases the lock when its process ends, however it ends, so a lock left by a
killed process is simply taken over. Readers (eval, predict, viz) take no lock and
write nothing.
"""

from __future__ import annotations

import dataclasses
import datetime
import fcntl
import hashlib
import json
import math
import os
import pathlib
import shutil
import socket
import sys
import tempfile
from collections.abc import Mapping
from typing import Any

from jaxcnn import checkpoint
from jaxcnn.errors import CheckpointError, DataError, JaxcnnError, listing
from jaxcnn.spec import ModelSpec, RunConfig

CONFIG = "config.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"
WRITER_LOCK = ".writer.lock"


def _file_mode() -> int:
    """The mode `open` gives a new file under this process's umask (e.g. 0644)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()

# Fields that may change when a run in an existing workdir is continued.
RESUMABLE_CHANGES = ("train.epochs", "train.patience", "train.checkpoint_steps")


# -- atomic files ---------------------------------------------------------------------------


def _to_json(value: Any) -> Any:
    """json.dumps fallback: numpy / JAX scalars and arrays become Python values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable: {value!r}")


def _finite(obj: Any) -> Any:
    """NaN / Inf become null so every file is strict JSON (readable by jq, browsers)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def dumps(obj: Any, **kwargs) -> str:
    # Round trip through the fallback first so numpy floats are checked for NaN as well.
    plain = json.loads(json.dumps(obj, default=_to_json))
    return json.dumps(_finite(plain), allow_nan=False, **kwargs)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Writes `text` to `path` so readers see the old or the new file, never a mix.

    The text goes to a temporary file in the same directory, which is flushed, fsynced
    and renamed over `path` with `os.replace`.
    """
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `path` atomically, as `write_text_atomic` does."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), _FILE_MODE)  # mkstemp's 0600 -> the user's umask
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    """Makes a rename durable; not every platform can open a directory."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Writes `obj` as indented JSON, atomically (see `write_text_atomic`)."""
    write_text_atomic(path, dumps(obj, indent=2, sort_keys=False) + "\n")


# -- metrics.jsonl + TensorBoard ------------------------------------------------------------


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
    """The epoch records of `workdir/metrics.jsonl` ([] if there is none).

    An unfinished last line (a run killed while appending: not valid JSON) is ignored.

    Raises:
      DataError: a line before the last is not valid JSON, or a line is valid JSON but
        not an epoch record (an object of numbers with an integer ``epoch`` >= 1, and
        ``step`` >= 0 when present).
    """
    path = os.path.join(os.fspath(workdir), METRICS)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [line for line in f.read().split("\n") if line.strip()]
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(lines):
                break
            raise DataError(
                f"{path} line {number} is not valid JSON ({e}); the file was edited or "
                f"damaged. Restore it, or start the run afresh with --restart"
            ) from None
        problem = _record_problem(record)
        if problem:
            raise DataError(
                f"{path} line {number} is not an epoch record ({problem}): "
                f"{line[:80]}; the file was edited or damaged. Restore it, or start "
                f"the run afresh with --restart"
            )
        records.append(record)
    return records


def _record_problem(record: Any) -> str | None:
    """Why `record` is not an epoch record of metrics.jsonl, or None."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    for key, least in (("epoch", 1), ("step", 0)):
        value = record.get(key)
        if key == "step" and value is None:
            continue  # written by every run, but not needed to read a log
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            return f"{key!r} must be an integer >= {least}, got {json.dumps(value)}"
    for key, value in record.items():
        if value is not None and not (
            isinstance(value, int | float) and not isinstance(value, bool)
        ):
            return f"{key!r} must be a number, got {json.dumps(value)}"
    return None


def _ranges(numbers: list[int]) -> str:
    """[1, 2, 3, 7] -> '1-3, 7'."""
    out, start = [], None
    for i, n in enumerate(numbers):
        if start is None:
            start = n
        if i + 1 == len(numbers) or numbers[i + 1] != n + 1:
            out.append(str(start) if start == n else f"{start}-{n}")
            start = None
    return ", ".join(out)


def _tensorboard_tag(name: str) -> str:
    """train_loss -> train/loss, so TensorBoard groups the curves by split."""
    for split in ("train", "val", "test"):
        if name.startswith(split + "_"):
            return f"{split}/{name[len(split) + 1 :]}"
    return name


class MetricsLog:
    """Appends one record per epoch to `metrics.jsonl` and TensorBoard (`tensorboard/`).

    Opening the log truncates `metrics.jsonl` to the epochs <= `resume_epoch`, so a run
    resumed from the checkpoint of epoch N (or restarted from scratch, N = 0) never
    repeats an epoch; TensorBoard events after that point are purged the same way. Use
    `read_metrics` to only read a workdir.

    The records kept must cover epochs 1 .. `resume_epoch`. When the last one is
    missing (a kill cut the line it was writing, or it was damaged) it is rebuilt from
    `resume_record`, the copy the checkpoint keeps.

    Args:
      workdir: the run directory (created if missing).
      resume_epoch: the epoch of the restored checkpoint, 0 for a fresh run.
      resume_record: the checkpoint's copy of epoch `resume_epoch`'s record, if any.
      write: False on the processes of a multi-process run other than process 0: they
        keep the history in memory and write no file.

    Raises:
      DataError: metrics.jsonl is damaged (see `read_metrics`), or lacks records of
        epochs up to `resume_epoch` that cannot be rebuilt.
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        resume_epoch: int = 0,
        resume_record: Mapping[str, Any] | None = None,
        write: bool = True,
    ):
        self.workdir = os.fspath(workdir)
        self.path = os.path.join(self.workdir, METRICS)
        self.write = write
        old = read_metrics(self.workdir)
        kept = [r for r in old if r["epoch"] <= resume_epoch]
        last = kept[-1]["epoch"] if kept else 0
        if (
            last == resume_epoch - 1
            and isinstance(resume_record, Mapping)
            and _record_problem(dict(resume_record)) is None
            and resume_record["epoch"] == resume_epoch
        ):
            kept.append(dict(resume_record))
        missing = sorted(set(range(1, resume_epoch + 1)) - {r["epoch"] for r in kept})
        if missing:
            raise DataError(
                f"{self.path} lacks the records of epoch(s) {_ranges(missing)}, which "
                f"the checkpoint being resumed (epoch {resume_epoch}) covers, and they "
                f"cannot be rebuilt from it; the file was cut or edited. Restore it, "
                f"or start the run afresh with --restart"
            )
        self._records = kept
        self._writer = None  # created on the first record, so opening writes no events
        self._purge_step = None
        if not write:
            return
        os.makedirs(self.workdir, exist_ok=True)
        if os.path.exists(self.path) or kept:
            write_text_atomic(self.path, "".join(dumps(r) + "\n" for r in kept))
        tensorboard = os.path.join(self.workdir, TENSORBOARD)
        if os.path.isdir(tensorboard) and os.listdir(tensorboard):
            self._purge_step = (kept[-1].get("step", -1) + 1) if kept else 0

    def log_epoch(self, record: Mapping[str, Any]) -> None:
        """Appends `record` (must hold ``epoch`` and ``step``) as one fsynced JSON line."""
        missing = {"epoch", "step"} - set(record)
        if missing:
            raise ValueError(
                f"metrics record needs {sorted(missing)}, got keys {sorted(record)}"
            )
        line = dumps(dict(record))
        if not self.write:
            self._records.append(json.loads(line))
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._records.append(json.loads(line))
        self._write_tensorboard(self._records[-1])

    def _write_tensorboard(self, record: dict) -> None:
        if self._writer is None:
            from tensorboardX import SummaryWriter  # no TensorFlow import

            self._writer = SummaryWriter(
                os.path.join(self.workdir, TENSORBOARD), purge_step=self._purge_step
            )
        step = int(record["step"])
        for name, value in record.items():
            if name in ("epoch", "step") or isinstance(value, bool):
                continue
            if isinstance(value, int | float):
                self._writer.add_scalar(_tensorboard_tag(name), value, step)
        self._writer.flush()

    def read(self) -> list[dict]:
        """The records written so far, including those kept from before a resume."""
        return [dict(r) for r in self._records]

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- a checkpoint's run identity ------------------------------------------------------------

IDENTITY = "run_identity"  # checkpoint meta key


def run_identity(config: RunConfig, spec: ModelSpec) -> dict[str, Any]:
    """What a checkpoint records of the run that wrote it: the run config, the resolved
    model spec and the sha256 digest of both (canonical JSON)."""
    record = {"run": config.to_dict(), "model_spec": spec.to_dict()}
    return {**record, "sha256": _digest(record)}


def _digest(record: Mapping[str, Any]) -> str:
    text = json.dumps(record, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def check_identity(
    meta: Mapping[str, Any],
    config: RunConfig,
    spec: ModelSpec,
    *,
    where: str,
    missing_is_error: bool,
) -> None:
    """Raises unless the checkpoint whose `meta` is given was written by this run.

    The checkpoint's identity (see `run_identity`) must be intact (its digest matches
    the record) and its config and spec equal `config` and `spec`, apart from the
    fields a resumed run may change (`RESUMABLE_CHANGES`). Fields added to the config
    since the checkpoint was written take their defaults, as in `RunDir.resumes`.

    Args:
      meta: the checkpoint's meta.
      config, spec: this run's.
      where: names the checkpoint in messages ("checkpoint step 40 in run/checkpoints").
      missing_is_error: a checkpoint without an identity is refused (resume); else it
        is used with a one-line warning on stderr (eval, predict).

    Raises:
      CheckpointError: the identity is missing (with `missing_is_error`), damaged, or
        another run's; the message names the differing fields.
    """
    identity = meta.get(IDENTITY)
    if identity is None:
        message = (
            f"{where} does not record which run wrote it (no {IDENTITY!r} in its meta: "
            f"written by an older jaxcnn, or edited), so jaxcnn cannot tell that it "
            f"belongs to this run"
        )
        if missing_is_error:
            raise CheckpointError(
                f"{message}. Start the run afresh (jaxcnn train --restart), or use "
                f"another --workdir; eval and predict still read it, with a warning"
            )
        print(f"warning: {message}; using it as this run's", file=sys.stderr)
        return
    try:
        record = {"run": identity["run"], "model_spec": identity["model_spec"]}
        intact = identity["sha256"] == _digest(record)
        saved_config = RunConfig.from_dict(record["run"]).to_dict()
        saved_spec = ModelSpec.from_dict(record["model_spec"]).to_dict()
    except (KeyError, TypeError, ValueError, JaxcnnError):
        intact = False
    if not intact:
        raise CheckpointError(
            f"{where} has a damaged run identity (its {IDENTITY!r} record does not "
            f"match the sha256 digest saved with it): its meta file was changed after "
            f"the save. Remove that step's directory, or start afresh with "
            f"jaxcnn train --restart"
        )
    labels = ("the checkpoint", "in this run")
    diff = _config_diff(saved_config, config.to_dict(), labels) + _dict_diff(
        saved_spec, spec.to_dict(), "model", labels
    )
    if diff:
        raise CheckpointError(
            f"{where} was written by another run ("
            + listing(diff, 5, sep="; ")
            + "): it was copied in from elsewhere. Remove that step's directory, or "
            "evaluate it in the run directory it came from"
        )


# -- the run directory ----------------------------------------------------------------------


def default_workdir(config: RunConfig) -> pathlib.Path:
    """runs/<model>-<dataset>, each reduced to a safe name that stays under runs/.

    A spec file `../specs/net.toml` gives `net`, a folder dataset its folder's name, a
    TFDS name `mnist/3.0.1` gives `mnist_3.0.1`; characters other than letters, digits,
    `-`, `_` and `.` become `_`, and leading dots are dropped.
    """
    model, dataset = config.model.name, config.data.dataset
    if model.endswith((".toml", ".json")):
        model = pathlib.PurePath(model).stem
    if os.path.isdir(dataset):
        dataset = pathlib.Path(dataset).resolve().name
    return pathlib.Path("runs") / f"{_safe_name(model)}-{_safe_name(dataset)}"


def _safe_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return cleaned.lstrip(".") or "run"


class WriterLock:
    """An exclusive `flock` on a run directory's `.writer.lock`: a context manager, held
    until its block ends (or `release`).

    The file keeps the holder's pid, host, start time and command line as JSON, so the
    next process refused the lock can say who holds it.
    """

    def __init__(self, path: pathlib.Path):
        self.path = path
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, _FILE_MODE)
        except OSError as e:  # e.g. left by another user, not writable by this one
            raise JaxcnnError(
                f"cannot open the writer lock {path} ({e.strerror}); make it writable "
                f"or use another --workdir"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            os.close(fd)
            raise JaxcnnError(
                f"workdir {path.parent} is being trained by {holder}; one run directory "
                f"takes one training process. Wait for it to finish (or stop it), or "
                f"use another --workdir; `jaxcnn eval` and `predict` may read it "
                f"meanwhile"
            ) from None
        except OSError as e:
            os.close(fd)
            raise JaxcnnError(
                f"cannot lock {path} ({e.strerror}); the file system of workdir "
                f"{path.parent} does not support file locks: use a workdir on another "
                f"file system"
            ) from None
        self._fd: int | None = fd
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now(datetime.UTC).isoformat(
                timespec="seconds"
            ),
            "command": sys.argv,
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (dumps(record) + "\n").encode(), 0)
        os.fsync(fd)

    def release(self) -> None:
        """Unlocks (the file stays; its content names the last holder)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WriterLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _lock_holder(fd: int) -> str:
    """'process 123 on host node7 (since 2026-01-01T10:00:00+00:00)', from the file."""
    try:
        record = json.loads(os.pread(fd, 65536, 0).decode())
        pid, host, started = record["pid"], record["host"], record["started"]
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (it has not yet written its pid into the lock file)"
    return f"process {pid} on host {host} (since {started})"


@dataclasses.dataclass(frozen=True)
class SavedRun:
    """What config.json holds: the run config, the resolved spec, the dataset record."""

    config: RunConfig
    spec: ModelSpec
    dataset: dict[str, Any]  # class names, normalisation statistics, split sizes


class RunDir:
    """One run's directory: paths, reads and writes of its files."""

    def __init__(self, path: str | os.PathLike):
        self.path = pathlib.Path(path)
        self.config_file = self.path / CONFIG
        self.metrics_file = self.path / METRICS
        self.summary_file = self.path / SUMMARY
        self.checkpoints = self.path / CHECKPOINTS
        self.tensorboard = self.path / TENSORBOARD

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def read(self) -> SavedRun:
        """The run's config.json.

        Raises:
          CheckpointError: not a run directory, or config.json is unreadable.
        """
        if not self.config_file.is_file():
            raise CheckpointError(
                f"{self.path} is not a jaxcnn run directory (no {CONFIG}); pass the "
                f"--workdir of a finished `jaxcnn train` run"
            )
        try:
            record = json.loads(self.config_file.read_text())
            config = RunConfig.from_dict(record["run"])
            spec = ModelSpec.from_dict(record["model_spec"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(
                f"{self.config_file} is not a readable run config ({type(e).__name__}: {e})"
            ) from None
        return SavedRun(config, spec, record.get("dataset", {}))

    def prepare(self) -> None:
        """Creates the directory and checks that jaxcnn can write in it.

        Raises:
          JaxcnnError: the path (or a folder above it) is a file, or the directory or
            its checkpoints/ cannot be written.
        """
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            file = next(p for p in (self.path, *self.path.parents) if p.is_file())
            raise JaxcnnError(
                f"workdir {self.path} cannot be created: {file} is a file. Pass a "
                f"folder for --workdir"
            ) from None
        except OSError as e:
            raise JaxcnnError(
                f"cannot create workdir {self.path} ({e.strerror}); use another --workdir"
            ) from None
        for directory in (self.path, self.checkpoints):
            if directory.is_dir():
                _check_writable(directory)

    def lock_for_writing(self) -> WriterLock:
        """Takes the directory's writer lock (call `prepare` first), held while a
        `with` block uses it.

        Raises:
          JaxcnnError: another live process holds it (the message names its pid and
            host), or the file system cannot lock files.
        """
        return WriterLock(self.path / WRITER_LOCK)

    def write_config(
        self, config: RunConfig, spec: ModelSpec, dataset: Mapping[str, Any]
    ) -> None:
        record = {"run": config.to_dict(), "model_spec": spec.to_dict()}
        write_json_atomic(self.config_file, {**record, "dataset": dict(dataset)})

    def metrics(self) -> list[dict]:
        """The epoch records of metrics.jsonl ([] when there is none)."""
        return read_metrics(self.path)

    def write_metrics(self, records: list[Mapping[str, Any]]) -> None:
        """Writes metrics.jsonl whole (atomically) from `records`."""
        write_text_atomic(self.metrics_file, "".join(dumps(r) + "\n" for r in records))

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        write_json_atomic(self.summary_file, summary)

    def has_checkpoint(self) -> bool:
        return checkpoint.has_checkpoint(self.checkpoints)

    def resumes(self, config: RunConfig, restart: bool) -> bool:
        """Whether training `config` here continues from the checkpoints in this directory.

        Raises:
          JaxcnnError: the directory holds a run with a different config, or run files
            (checkpoints, metrics) without the config.json that says what they are.
        """
        if restart:
            return False
        if not self.config_file.exists():
            found = self._run_files()
            if found:
                raise JaxcnnError(
                    f"workdir {self.path} holds {', '.join(found)} but no {CONFIG}, so "
                    f"jaxcnn cannot tell which run they belong to and will not overwrite "
                    f"them. Use another --workdir, or --restart to discard them"
                )
            return False
        # Through RunConfig, so fields added since the run was written take their
        # defaults instead of counting as changes.
        saved = self.read().config.to_dict()
        diff = _config_diff(saved, config.to_dict())
        if diff:
            raise JaxcnnError(
                f"workdir {self.path} holds a run with a different config ("
                + "; ".join(diff[:5])
                + "). Use another --workdir, or --restart to discard that run."
            )
        return self.has_checkpoint()

    def check_spec(self, spec: ModelSpec) -> None:
        """Raises unless `spec` is the model the saved run trained (e.g. an edited spec file).

        Raises:
          JaxcnnError: the resolved specs differ; the message names the first differences.
        """
        saved = self.read().spec.to_dict()
        diff = _dict_diff(saved, spec.to_dict(), "model")
        if diff:
            raise JaxcnnError(
                f"workdir {self.path} holds a run of a different model ("
                + "; ".join(diff[:5])
                + "): its checkpoints do not belong to this architecture. Use another "
                "--workdir, or --restart to discard that run"
            )

    def _run_files(self) -> list[str]:
        """The files of a run found here ("checkpoints/", "metrics.jsonl", ...)."""
        found = [f"{CHECKPOINTS}/"] if self.has_checkpoint() else []
        return found + [
            f.name for f in (self.metrics_file, self.summary_file) if f.exists()
        ]

    def clear(self) -> None:
        """Removes the files a previous jaxcnn run wrote here, and nothing else.

        Checkpoint step directories (and orbax's unfinished ones), TensorBoard event
        files, metrics.jsonl and summary.json go; any other file stays where it is.
        """
        for path in _listdir(self.checkpoints):
            if _is_checkpoint_entry(path.name):
                shutil.rmtree(path, ignore_errors=True)
        for path in _listdir(self.tensorboard):
            if path.name.startswith("events.out.tfevents."):
                path.unlink(missing_ok=True)
        for file in (self.metrics_file, self.summary_file):
            file.unlink(missing_ok=True)
        for directory in (self.checkpoints, self.tensorboard):
            if directory.is_dir() and not any(directory.iterdir()):
                directory.rmdir()


def _check_writable(directory: pathlib.Path) -> None:
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".jaxcnn-write-test-"):
            pass
    except OSError as e:
        raise JaxcnnError(
            f"cannot write in {directory} ({e.strerror}): make it writable or use "
            f"another --workdir"
        ) from None


def _listdir(directory: pathlib.Path) -> list[pathlib.Path]:
    return sorted(directory.iterdir()) if directory.is_dir() else []


def _is_checkpoint_entry(name: str) -> bool:
    """An orbax step directory ("120") or one a killed save left ("120.orbax-...-tmp-3")."""
    return name.split(".", 1)[0].isdigit() and (
        name.isdigit() or ".orbax-checkpoint-tmp" in name
    )


def _dict_diff(
    old: Any, new: Any, path: str, where: tuple[str, str] = ("the workdir", "now")
) -> list[str]:
    """Where two JSON-like values differ, as "path: old in A vs new in B" lines."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += _dict_diff(old.get(key), new.get(key), f"{path}.{key}", where)
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        out = []
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            out += _dict_diff(a, b, f"{path}[{i}]", where)
        return out
    if old == new:
        return []
    return [f"{path}: {json.dumps(old)} in {where[0]} vs {json.dumps(new)} {where[1]}"]


def _config_diff(
    old: dict, new: dict, where: tuple[str, str] = ("the workdir", "now")
) -> list[str]:
    out = []
    for section in new:
        for key in sorted(set(old.get(section, {})) | set(new[section])):
            path = f"{section}.{key}"
            a, b = old.get(section, {}).get(key), new[section].get(key)
            if a != b and path not in RESUMABLE_CHANGES:
                out.append(
                    f"{path}: {json.dumps(a)} in {where[0]} vs {json.dumps(b)} {where[1]}"
                )
    return out
