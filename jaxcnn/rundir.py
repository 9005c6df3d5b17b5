"""The run directory: its files, their atomic writes and reads, and the resume decision.

    WORKDIR/config.json     the resolved run config, model spec and dataset record
    WORKDIR/metrics.jsonl   one record per epoch, one fsynced line each
    WORKDIR/summary.json    the final summary
    WORKDIR/checkpoints/    orbax checkpoints (written through checkpoint.py)
    WORKDIR/tensorboard/    TensorBoard event files

A crash never leaves half a file behind: whole files go through a temporary file in the
same directory that is fsynced and renamed over the target; `metrics.jsonl` grows by one
fsynced line per epoch, and an unfinished last line left by a kill is dropped when the
log is reopened.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

from jaxcnn import checkpoint
from jaxcnn.errors import CheckpointError, DataError, JaxcnnError
from jaxcnn.spec import ModelSpec, RunConfig

CONFIG = "config.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"


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

    An unfinished last line (a run killed while appending) is ignored.
    """
    path = os.path.join(os.fspath(workdir), METRICS)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f.read().split("\n") if line.strip()]
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if number == len(lines):
                break
            raise DataError(f"{path} line {number} is not valid JSON: {e}") from e
    return records


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

    Args:
      workdir: the run directory (created if missing).
      resume_epoch: the epoch of the restored checkpoint, 0 for a fresh run.
      write: False on the processes of a multi-process run other than process 0: they
        keep the history in memory and write no file.
    """

    def __init__(
        self, workdir: str | os.PathLike, *, resume_epoch: int = 0, write: bool = True
    ):
        self.workdir = os.fspath(workdir)
        self.path = os.path.join(self.workdir, METRICS)
        self.write = write
        old = read_metrics(self.workdir)
        kept = [r for r in old if r.get("epoch", 0) <= resume_epoch]
        self._records = kept
        self._writer = None  # created on the first record, so opening writes no events
        self._purge_step = None
        if not write:
            return
        os.makedirs(self.workdir, exist_ok=True)
        if os.path.exists(self.path):
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


def _dict_diff(old: Any, new: Any, path: str) -> list[str]:
    """Where two JSON-like values differ, as "path: old vs new" lines."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += _dict_diff(old.get(key), new.get(key), f"{path}.{key}")
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        out = []
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            out += _dict_diff(a, b, f"{path}[{i}]")
        return out
    if old == new:
        return []
    return [f"{path}: {json.dumps(old)} in the workdir vs {json.dumps(new)} now"]


def _config_diff(old: dict, new: dict) -> list[str]:
    out = []
    for section in new:
        for key in sorted(set(old.get(section, {})) | set(new[section])):
            path = f"{section}.{key}"
            a, b = old.get(section, {}).get(key), new[section].get(key)
            if a != b and path not in RESUMABLE_CHANGES:
                out.append(
                    f"{path}: {json.dumps(a)} in the workdir vs {json.dumps(b)} now"
                )
    return out
