"""How much memory one training device can hold: the budget `footprint.check_fits` is given.

`shapes` stays free of JAX, so the question "how big is this device" lives here:

* GPU / TPU: XLA's allocator limit, `device.memory_stats()["bytes_limit"]` (what JAX may
  use of the device after its preallocation fraction, `XLA_PYTHON_CLIENT_MEM_FRACTION`).
* CPU (no memory stats): the host's physical RAM, or the cgroup (container) memory limit
  when that is lower, shared evenly by the local CPU devices, which live in one process.
"""

from __future__ import annotations

import os
import pathlib

import jax

# cgroup v2 and v1 memory limits; "max" or a huge number means no limit.
CGROUP_LIMIT_FILES = (
    pathlib.Path("/sys/fs/cgroup/memory.max"),
    pathlib.Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
)


def host_memory_bytes() -> int:
    """Physical RAM, or the cgroup memory limit of this process when that is lower."""
    limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in CGROUP_LIMIT_FILES:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            limit = min(limit, int(text))
    return limit


def device_memory_bytes(device: jax.Device | None = None) -> int:
    """Bytes one device can hold (default: the first local device).

    Accelerators report XLA's allocator limit; a CPU device gets an equal share of
    `host_memory_bytes()` among the local CPU devices.
    """
    device = device if device is not None else jax.local_devices()[0]
    try:
        stats = device.memory_stats()
    except (AttributeError, NotImplementedError, RuntimeError):  # not on every backend
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    if device.platform == "cpu":
        return host_memory_bytes() // len(jax.local_devices(backend="cpu"))
    return host_memory_bytes()
