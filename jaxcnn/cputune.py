"""Process-wide settings that make XLA:CPU train faster, for programs owning the process.

The `jaxcnn` command, the experiment scripts, the benchmarks and the test suite call
`apply`; ``import jaxcnn`` does not (a library changes nothing in its user's process). A
program that uses jaxcnn as a library opts in with one call, before anything has run on
JAX: ``jaxcnn.cputune.apply()``.

Two settings (what each is worth: benchmarks/results/levers_cputune.md):

- **malloc**: XLA:CPU allocates one large scratch buffer per executable run with
  ``posix_memalign``. glibc serves a block that large with a fresh ``mmap`` and gives it
  back with ``munmap``, so without this setting every dispatch faults its scratch in
  again, page by page. `keep_freed_memory` makes glibc serve every allocation from its
  main heap (one arena, no ``mmap``) and keep freed memory instead of trimming it, so
  the next dispatch reuses pages that are already mapped. The cost: freed memory stays
  with the process for reuse rather than going back to the OS.
- **flags**: `XLA_CPU_FLAGS` are added to ``XLA_FLAGS``. XLA's older LLVM loop emitter
  for elementwise fusions (``--xla_cpu_use_fusion_emitters=false``) runs the im2col and
  pooling fusions faster than the newer MLIR emitters.
  Where no accelerator plugin is installed (or ``JAX_PLATFORMS`` says cpu), LLVM's loop
  strength reduction is turned off too (``--xla_backend_extra_options=-disable-lsr``):
  it takes much of XLA:CPU's code generation time, quadratic in the many address
  expressions of the Winograd tile transforms, and the code it produces runs no faster
  (benchmarks/results/levers_lsr*.md and one_off.md). That option reaches every LLVM
  backend of the process, GPU code generation included, hence the CPU-only condition.
  A flag the user already set in ``XLA_FLAGS`` is left as it is. XLA reads ``XLA_FLAGS``
  when its first backend starts, so this only takes effect when jaxcnn is imported
  before anything has run on JAX. GPU and TPU backends ignore ``xla_cpu_*`` flags.

Both must happen before XLA starts. ``JAXCNN_CPU_TUNING`` chooses: ``on`` (default), ``off``, ``malloc`` or ``flags``.
Elsewhere than glibc (macOS, musl) the malloc part does nothing.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.metadata
import importlib.util
import os
import pkgutil

from jaxcnn.errors import JaxcnnError

ENV = "JAXCNN_CPU_TUNING"
CHOICES = ("on", "off", "malloc", "flags")
XLA_CPU_FLAGS = ("--xla_cpu_use_fusion_emitters=false",)
# only where the process has no accelerator backend (see the module docstring)
XLA_CPU_ONLY_FLAGS = ("--xla_backend_extra_options=-disable-lsr",)
ACCELERATOR_PLATFORMS = ("cuda", "gpu", "rocm", "tpu")
# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
# keep up to 2 GiB of freed heap before giving any back (mallopt takes an int)
_TRIM_THRESHOLD = 2**31 - 1

_state: dict[str, bool] = {}


def apply() -> dict[str, bool]:
    """Applies the settings ``JAXCNN_CPU_TUNING`` asks for (idempotent); call it before
    anything runs on JAX.

    Returns:
      {"malloc": bool, "flags": bool}: which settings are in effect.

    Raises:
      JaxcnnError: ``JAXCNN_CPU_TUNING`` is not one of `CHOICES` (nothing is applied).
    """
    if not _state:
        raw = os.environ.get(ENV, "on")
        choice = raw.strip().lower() or "on"
        if choice not in CHOICES:
            raise JaxcnnError(
                f"environment variable {ENV}={raw!r} is not valid; "
                f"use one of {', '.join(CHOICES)}"
            )
        _state["malloc"] = choice in ("on", "malloc") and keep_freed_memory()
        _state["flags"] = choice in ("on", "flags") and _add_xla_flags()
    return active()


def active() -> dict[str, bool]:
    """Which settings `apply` put in effect in this process (all False before it ran)."""
    return {"malloc": _state.get("malloc", False), "flags": _state.get("flags", False)}


def keep_freed_memory() -> bool:
    """glibc malloc: one arena, no mmap, no trimming (see the module docstring).

    Returns:
      True when glibc accepted all three settings; False elsewhere than glibc.
    """
    if not _is_glibc():
        return False
    return all(
        _libc().mallopt(param, value) == 1
        for param, value in (
            (_M_ARENA_MAX, 1),  # threads share the main arena, which can grow freely
            (_M_MMAP_MAX, 0),  # large blocks come from the heap, not fresh mmaps
            (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD),
        )
    )


def release_free_memory() -> None:
    """Returns the heap's free pages to the OS (glibc ``malloc_trim``), once, between
    phases: with trimming off (`keep_freed_memory`), what dataset loading and compiling
    freed would otherwise stay resident for the whole run. A no-op unless the malloc
    setting is in effect."""
    if active()["malloc"]:
        _libc().malloc_trim(0)


def xla_flags() -> tuple[str, ...]:
    """The flags `apply` adds to ``XLA_FLAGS`` in this process (unless set there)."""
    return XLA_CPU_FLAGS + (XLA_CPU_ONLY_FLAGS if cpu_only() else ())


def cpu_only() -> bool:
    """Whether JAX will run on nothing but its CPU backend in this process.

    ``JAX_PLATFORMS`` decides when it is set; otherwise whether a PJRT plugin (what
    JAX's GPU and other backends are installed as: entry points or modules of the
    ``jax_plugins`` group) or libtpu is installed.
    """
    platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        return not any(p.strip() in ACCELERATOR_PLATFORMS for p in platforms.split(","))
    if importlib.metadata.entry_points(group="jax_plugins"):
        return False
    try:
        namespace = importlib.util.find_spec("jax_plugins")
    except (ImportError, ValueError):
        namespace = None
    if namespace is not None and any(
        pkgutil.iter_modules(namespace.submodule_search_locations or [])
    ):
        return False
    return importlib.util.find_spec("libtpu") is None


def _add_xla_flags() -> bool:
    current = os.environ.get("XLA_FLAGS", "")
    names = {part.split("=", 1)[0] for part in current.split()}
    extra = [f for f in xla_flags() if f.split("=", 1)[0] not in names]
    if extra:
        os.environ["XLA_FLAGS"] = " ".join([current, *extra]).strip()
    return True


@functools.cache
def _libc() -> ctypes.CDLL:
    """The C library this process already runs on (no search on disk)."""
    return ctypes.CDLL(None)


def _is_glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (AttributeError, ValueError, OSError):
        return False
