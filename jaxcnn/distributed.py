"""Multi-process (multi-host) set-up: JAX's multi-controller runtime, with bounded waits.

One jaxcnn process runs per host (or per GPU); every process runs the same program on
its own devices, and `jax.distributed` joins them into one set of global devices that the
training mesh spans. This module only starts that runtime and answers "which process am
I"; the training code is the same for one process and for many.

Timeouts (seconds; flags of `jaxcnn train`, or environment variables):

- `init_timeout` (``JAXCNN_INIT_TIMEOUT``, default 120): how long a process waits for
  all others to join. A process that cannot reach the coordinator in that time stops
  with a non-zero exit status instead of waiting forever.
- `heartbeat_timeout` (``JAXCNN_HEARTBEAT_TIMEOUT``, default 30): a process that sends
  no heartbeat for this long counts as dead, and every other process then stops with
  XLA's message "Terminating process because the JAX distributed service detected fatal
  errors. This most likely indicates that another task died". Rerunning all processes
  with the same workdir resumes from the last checkpoint.

Those two failures are reported by XLA's runtime, which aborts the process (exit status
134, SIGABRT): there is no Python exception to catch. Bad arguments are caught here,
before anything connects, as `JaxcnnError`s.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import jax

from jaxcnn.errors import JaxcnnError

DEFAULT_INIT_TIMEOUT = (
    120  # s; processes of one job may start minutes apart on a cluster
)
DEFAULT_HEARTBEAT_TIMEOUT = 30  # s; how soon the others notice a dead process


@dataclasses.dataclass(frozen=True)
class ProcessInfo:
    """Where this process stands: index, count and the coordinator it joined (or None)."""

    process_id: int
    num_processes: int
    coordinator: str | None


def parse_address(text: str) -> tuple[str, int]:
    """Splits "HOST:PORT" (also "[::1]:PORT") into (host, port), checking both.

    Raises:
      JaxcnnError: no port, an empty host, or a port outside 1..65535.
    """
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or host in ("[", "[]"):
        raise JaxcnnError(
            f"--coordinator must be HOST:PORT (e.g. 10.0.0.1:1234 or node001:1234), "
            f"got {text!r}"
        )
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 1 <= number <= 65535:
        raise JaxcnnError(
            f"--coordinator {text!r} has port {port!r}; use a free TCP port in "
            f"1..65535 on the host of process 0, e.g. {host}:1234"
        )
    return host, number


def _timeout(value: int | None, flag: str, variable: str, default: int) -> int:
    if value is None:
        text = os.environ.get(variable)
        if text is None:
            return default
        try:
            value = int(text)
        except ValueError:
            raise JaxcnnError(
                f"{variable}={text!r} is not a whole number of seconds"
            ) from None
    if value < 1:
        raise JaxcnnError(
            f"{flag} (or {variable}) must be >= 1 second, got {value}; "
            f"the default is {default}"
        )
    return int(value)


def _timeouts(
    init_timeout: int | None, heartbeat_timeout: int | None
) -> tuple[int, int]:
    """(init, heartbeat) seconds: the arguments, else the environment, else defaults."""
    init_s = _timeout(
        init_timeout, "--init-timeout", "JAXCNN_INIT_TIMEOUT", DEFAULT_INIT_TIMEOUT
    )
    heartbeat_s = _timeout(
        heartbeat_timeout,
        "--heartbeat-timeout",
        "JAXCNN_HEARTBEAT_TIMEOUT",
        DEFAULT_HEARTBEAT_TIMEOUT,
    )
    return init_s, heartbeat_s


def _cluster_detected() -> str | None:
    """Names the launcher whose environment describes a multi-process job, if any.

    These are the environments `jax.distributed.initialize` reads by itself (a SLURM job
    step started with srun, Open MPI's mpirun, or JAX_COORDINATOR_ADDRESS); a
    single-task job is left alone so `jaxcnn train` inside `salloc` stays one process.
    """

    def count(name: str) -> int:
        try:
            return int(os.environ.get(name, "1"))
        except ValueError:
            return 1

    if "SLURM_JOB_ID" in os.environ and "SLURM_STEP_NODELIST" in os.environ:
        if count("SLURM_NTASKS") > 1:
            return "SLURM"
    if count("OMPI_COMM_WORLD_SIZE") > 1:
        return "Open MPI"
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return "JAX_COORDINATOR_ADDRESS"
    return None


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    init_timeout: int | None = None,
    heartbeat_timeout: int | None = None,
    verbose: bool = True,
) -> ProcessInfo:
    """Joins this process to a multi-process job; a no-op for a single process.

    Call it before anything touches JAX devices. With no arguments it starts the
    runtime only when a cluster launcher describes a multi-process job (SLURM srun,
    Open MPI, or JAX_COORDINATOR_ADDRESS with the others from the cluster); otherwise
    the run stays single-process. Calling it again with the same job is a no-op.

    On CPU, cross-process collectives use gloo over TCP.

    Args:
      coordinator: "HOST:PORT" of process 0, reachable from every process.
      num_processes: how many processes the job has (>= 1).
      process_id: this process's index, 0 <= process_id < num_processes.
      init_timeout: seconds to wait for every process to join (see module docstring).
      heartbeat_timeout: seconds after which a silent process counts as dead.
      verbose: print one line to stderr before connecting (so a wait has a reason).

    Returns:
      ProcessInfo of this process.

    Raises:
      JaxcnnError: incomplete or invalid arguments, or JAX already started.
    """
    _check_arguments(coordinator, num_processes, process_id)
    init_s, heartbeat_s = _timeouts(init_timeout, heartbeat_timeout)
    if jax.distributed.is_initialized():
        return _info()
    launcher = _cluster_detected()
    if not _joins_a_job(coordinator, num_processes, process_id, launcher):
        return ProcessInfo(0, 1, None)
    _require_unstarted_backends()
    job = (coordinator, num_processes, process_id, launcher, init_s, heartbeat_s)
    if verbose:
        _announce(*job)
    _connect(*job)
    return _info()


def _check_arguments(
    coordinator: str | None, num_processes: int | None, process_id: int | None
) -> None:
    """Checks each given flag on its own and process_id against num_processes."""
    if num_processes is not None and num_processes < 1:
        raise JaxcnnError(f"--num-processes must be >= 1, got {num_processes}")
    if process_id is not None and process_id < 0:
        raise JaxcnnError(f"--process-id must be >= 0, got {process_id}")
    if (
        num_processes is not None
        and process_id is not None
        and process_id >= num_processes
    ):
        raise JaxcnnError(
            f"--process-id {process_id} is out of range for --num-processes "
            f"{num_processes}; use 0..{num_processes - 1}, one per process"
        )
    if coordinator is not None:
        parse_address(coordinator)


def _joins_a_job(
    coordinator: str | None,
    num_processes: int | None,
    process_id: int | None,
    launcher: str | None,
) -> bool:
    """Whether the flags (or else a cluster launcher) describe a multi-process job.

    Raises:
      JaxcnnError: some flags of a multi-process job given, others missing, and no
        launcher to provide them.
    """
    given = {
        "--coordinator": coordinator,
        "--num-processes": num_processes,
        "--process-id": process_id,
    }
    if all(v is None for v in given.values()):
        return launcher is not None
    if num_processes == 1 and process_id in (None, 0):
        return False  # one process needs no coordinator
    if launcher is None and any(v is None for v in given.values()):
        missing = [flag for flag, v in given.items() if v is None]
        raise JaxcnnError(
            f"a multi-process run needs --coordinator HOST:PORT, --num-processes N and "
            f"--process-id I on every process; missing {', '.join(missing)} (or start "
            f"the processes with srun / mpirun, which provide them)"
        )
    return True


def _require_unstarted_backends() -> None:
    """Raises JaxcnnError when JAX has already started a backend in this process."""
    from jax._src import xla_bridge  # the check jax.distributed itself uses

    if xla_bridge.backends_are_initialized():
        raise JaxcnnError(
            "jaxcnn.distributed.initialize() must run before anything uses JAX devices "
            "(jax.devices(), an array, a computation); call it first in the program"
        )


def _announce(
    coordinator: str | None,
    num_processes: int | None,
    process_id: int | None,
    launcher: str | None,
    init_s: int,
    heartbeat_s: int,
) -> None:
    """One line on stderr before connecting, so that a wait has a visible reason."""
    where = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS") or launcher
    who = (
        f"process {process_id} of {num_processes}"
        if process_id is not None
        else f"a {launcher} process"
    )
    print(
        f"jaxcnn: {who} joining {where} (waits up to {init_s} s for the others; "
        f"a process silent for {heartbeat_s} s stops the job)",
        file=sys.stderr,
        flush=True,
    )


def _connect(
    coordinator: str | None,
    num_processes: int | None,
    process_id: int | None,
    launcher: str | None,
    init_s: int,
    heartbeat_s: int,
) -> None:
    """Starts JAX's multi-controller runtime (gloo for CPU collectives by default)."""
    if jax.config.jax_cpu_collectives_implementation is None:
        # gloo (TCP) is the cross-process CPU collective that needs no MPI install; it
        # only concerns the CPU backend, so GPU/TPU runs are unaffected. A user's own
        # choice (e.g. "mpi") is kept.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=num_processes,
            process_id=process_id,
            initialization_timeout=init_s,
            heartbeat_timeout_seconds=heartbeat_s,
            shutdown_timeout_seconds=init_s,
        )
    except (ValueError, TypeError, RuntimeError) as e:
        raise JaxcnnError(
            f"cannot start the multi-process runtime ({launcher or 'flags'}): {e}"
        ) from e


_LOST_CONTACT = ("Gloo", "Connection closed by peer", "Connection reset by peer")


def exit_on_error(error: BaseException, *, debug: bool = False) -> None:
    """In a multi-process job, reports `error` and ends this process at once.

    A process of a job that returns normally waits at JAX's shutdown barrier for the
    others, which may be blocked in a collective waiting for it, and both are then
    aborted after the shutdown timeout. Leaving without that barrier (exit status 2 for
    a JaxcnnError, 1 otherwise) lets the others notice within the heartbeat timeout.
    Does nothing in a single-process run, where the caller reports the error as usual.
    """
    if not jax.distributed.is_initialized() or jax.process_count() == 1:
        return
    import traceback

    # a collective failed: in a step (JaxRuntimeError) or in a host-side gather such as
    # orbax's process sync (a ValueError carrying the transport's message)
    lost = isinstance(error, jax.errors.JaxRuntimeError) or any(
        word in str(error) for word in _LOST_CONTACT
    )
    if debug or not (lost or isinstance(error, JaxcnnError)):
        traceback.print_exception(error)
    if isinstance(error, JaxcnnError):
        print(f"error: {error}", file=sys.stderr)
    elif lost:
        detail = str(error).split("Error dispatching computation: ")[-1].strip()
        print(
            f"error: lost contact with another process of the job ({detail[:300]}); "
            f"it has probably died, see its log. Rerun all processes with the same "
            f"--workdir to resume from the last checkpoint",
            file=sys.stderr,
        )
    print(
        f"jaxcnn: process {jax.process_index()} of {jax.process_count()} stopped; the "
        f"other processes stop within the heartbeat timeout",
        file=sys.stderr,
    )
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(2 if isinstance(error, JaxcnnError) else 1)


def _info() -> ProcessInfo:
    from jax._src import distributed as _state

    return ProcessInfo(
        jax.process_index(),
        jax.process_count(),
        _state.global_state.coordinator_address,
    )


def process_count() -> int:
    """How many processes share the training job (1 without `initialize`)."""
    return jax.process_count()


def process_index() -> int:
    """This process's index, 0..process_count() - 1."""
    return jax.process_index()


def is_primary() -> bool:
    """True on process 0, the one that writes logs, run files and progress."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier `name` (no-op for one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def broadcast_from_primary(value: int) -> int:
    """Process 0's `value` on every process (an int; returned as is for one process)."""
    if jax.process_count() == 1:
        return int(value)
    import numpy as np
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.int32(value)))
