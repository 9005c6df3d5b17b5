"""Shared fixtures: strict numpy rank promotion, tiny specs, and real datasets built once."""

import fcntl
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import pytest

from jaxcnn import cputune
from jaxcnn.data.catalog import shared_data_dir

# The suite owns its process: the settings the jaxcnn command runs with (before JAX
# starts), and strict numpy rank promotion.
cputune.apply()
jax.config.update("jax_numpy_rank_promotion", "raise")

# ../shared/data beside the checkout holds the raw MNIST / Fashion-MNIST files (CI has it).
SHARED_DATA = shared_data_dir()
# Built TFDS datasets live outside the repo and survive between sessions.
TFDS_CACHE = pathlib.Path(
    os.environ.get(
        "JAXCNN_TEST_TFDS_DIR", pathlib.Path.home() / ".cache" / "jaxcnn-tests" / "tfds"
    )
)


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """The folder of raw MNIST / Fashion-MNIST downloads (see its README)."""
    if not (SHARED_DATA / "mnist" / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"raw datasets not found in {SHARED_DATA}; set JAXCNN_SHARED_DATA")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tfds_dir(shared_data) -> pathlib.Path:
    """A TFDS data_dir with mnist and fashion_mnist prepared, built once per machine.

    A file lock keeps parallel pytest workers from building the same dataset twice.
    """
    from jaxcnn import data

    TFDS_CACHE.mkdir(parents=True, exist_ok=True)
    with open(TFDS_CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for name in ("mnist", "fashion_mnist"):
            data.prepare_dataset(
                name, data_dir=str(TFDS_CACHE), manual_dir=str(shared_data / name)
            )
    return TFDS_CACHE


def _snapshot(directory: pathlib.Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(directory.rglob("*"))
    }


@pytest.fixture(scope="session")
def snapshot():
    """`snapshot(directory)`: every path under it with its size and modification time,
    to assert that a reader (or a refused run) changed nothing there."""
    return _snapshot


@pytest.fixture(scope="session")
def digits_config():
    """The run config of `digits_run`: the embedded digits default, 3 epochs, standardised."""
    from jaxcnn.spec import RunConfig

    return RunConfig().override("train.epochs", 3).override("data.standardize", True)


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory, digits_config) -> pathlib.Path:
    """A finished run of `digits_config`, trained once per session (two checkpoints kept,
    the newest the best). Tests only read it; copy it to change it."""
    from jaxcnn import train

    workdir = tmp_path_factory.mktemp("digits_run")
    train.fit(digits_config, workdir, quiet=True)
    return workdir


@pytest.fixture(scope="session")
def as_nobody() -> list[str]:
    """The prefix that runs a command as `nobody` when the tests run as root (root's
    permission override would hide a read-only directory); [] otherwise. Skips when that
    user cannot import this Python environment (e.g. a venv in a private folder)."""
    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: cannot drop root's permissions")
    prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    repo = str(pathlib.Path(__file__).resolve().parents[1])
    probe = subprocess.run(
        [*prefix, sys.executable, "-c", "import jax, numpy, jaxcnn"],
        env={**os.environ, "PYTHONPATH": repo},
        cwd="/",
        capture_output=True,
        text=True,
    )
    if probe.returncode:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        pytest.skip(f"user nobody cannot import this Python environment ({last})")
    return prefix
