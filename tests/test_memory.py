"""memory.py: the per-device memory budget (XLA's limit, or a share of the host's RAM)."""

import os

import jax

from jaxcnn import memory


class _Device:
    def __init__(self, platform, stats):
        self.platform, self._stats = platform, stats

    def memory_stats(self):
        if isinstance(self._stats, Exception):
            raise self._stats
        return self._stats


def test_accelerators_report_xla_bytes_limit():
    assert memory.device_memory_bytes(_Device("gpu", {"bytes_limit": 12345})) == 12345


def test_cpu_devices_share_the_host_memory():
    cpus = len(jax.local_devices(backend="cpu"))
    cpu = jax.local_devices(backend="cpu")[0]
    assert memory.device_memory_bytes(cpu) == memory.host_memory_bytes() // cpus
    assert memory.device_memory_bytes(_Device("cpu", None)) == (
        memory.host_memory_bytes() // cpus
    )
    unsupported = _Device("cpu", NotImplementedError("no stats"))
    assert memory.device_memory_bytes(unsupported) == memory.host_memory_bytes() // cpus


def test_host_memory_is_the_lower_of_ram_and_the_cgroup_limit(tmp_path, monkeypatch):
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    unlimited, limited = tmp_path / "memory.max", tmp_path / "limit_in_bytes"
    unlimited.write_text("max\n")
    monkeypatch.setattr(memory, "CGROUP_LIMIT_FILES", (unlimited, tmp_path / "missing"))
    assert memory.host_memory_bytes() == ram
    limited.write_text(f"{2**30}\n")
    monkeypatch.setattr(memory, "CGROUP_LIMIT_FILES", (unlimited, limited))
    assert memory.host_memory_bytes() == min(ram, 2**30)
