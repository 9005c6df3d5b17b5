"""jaxcnn.cputune: freed host memory is reused without page faults, XLA_FLAGS gets the
CPU flags without overriding the user's, and JAXCNN_CPU_TUNING chooses or rejects.

Each case runs in a fresh interpreter: these settings belong to a process and must be
made before XLA starts, which is what `import jaxcnn` does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from jaxcnn import cputune
from jaxcnn.cli import main

glibc_only = pytest.mark.skipif(
    not cputune._is_glibc(), reason="the malloc tuning applies to glibc only"
)

# Allocates, touches and frees 96 MiB on a worker thread (XLA allocates its scratch from
# its own threads), twice, and counts the page faults of the second round.
PROBE = """
import ctypes, json, os, resource, sys, threading
import jaxcnn
from jaxcnn import cputune, errors

out = {}
if os.environ.get("PROBE_APPLY", "1") == "1":  # as the jaxcnn command does
    try:
        cputune.apply()
    except errors.JaxcnnError as e:
        out["error"] = str(e)

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
SIZE = 96 << 20

def cycle():
    p = libc.malloc(SIZE)
    ctypes.memset(p, 1, SIZE)
    libc.free(p)

def worker():
    cycle()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    cycle()
    out["faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

t = threading.Thread(target=worker)
t.start()
t.join()
out["rss_kept_mb"] = rss_mb()
cputune.release_free_memory()
out["rss_released_mb"] = rss_mb()
# XLA (and LLVM) accept the flags: an unknown one would end the process here
import jax, jax.numpy as jnp
out["computed"] = float(jax.jit(lambda x: jnp.sum(x * x))(jnp.arange(4.0)))
print(json.dumps({**cputune.active(), **out, "xla_flags": os.environ.get("XLA_FLAGS")}))
"""
PAGES = (96 << 20) // os.sysconf("SC_PAGE_SIZE")


def _probe(**env) -> dict:
    env = {**os.environ, **env}
    for name, value in list(env.items()):
        if value is None:
            del env[name]
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc_only
def test_import_alone_changes_nothing_in_the_process():
    """A library import leaves glibc's malloc and XLA_FLAGS as they were, and JAX
    still runs."""
    result = _probe(JAXCNN_CPU_TUNING=None, XLA_FLAGS=None, PROBE_APPLY="0")
    assert result["malloc"] is False and result["flags"] is False
    assert result["faults"] > PAGES // 2, result
    assert result["xla_flags"] is None
    assert result["computed"] == 14.0


@glibc_only
def test_apply_keeps_freed_memory_mapped():
    result = _probe(JAXCNN_CPU_TUNING=None, XLA_FLAGS=None)
    assert result["malloc"] is True
    # the second 96 MiB round reuses pages that are already mapped
    assert result["faults"] < PAGES // 20, result
    # ... which stay resident until release_free_memory hands them back
    assert result["rss_kept_mb"] - result["rss_released_mb"] > 64, result


@glibc_only
def test_opt_out_leaves_glibc_defaults():
    result = _probe(JAXCNN_CPU_TUNING="off", XLA_FLAGS=None)
    assert result["malloc"] is False and result["flags"] is False
    # glibc maps a block this large afresh each time: every page faults again
    assert result["faults"] > PAGES // 2, result
    assert result["xla_flags"] is None


def test_xla_flags_added_next_to_the_users():
    result = _probe(
        JAXCNN_CPU_TUNING="flags",
        XLA_FLAGS="--xla_cpu_enable_fast_math=false",
        JAX_PLATFORMS="cpu",
    )
    assert result["flags"] is True and result["malloc"] is False
    assert result["xla_flags"].split() == [
        "--xla_cpu_enable_fast_math=false",
        *cputune.XLA_CPU_FLAGS,
        *cputune.XLA_CPU_ONLY_FLAGS,
    ]
    assert result["computed"] == 14.0


def test_llvm_option_only_where_no_accelerator_runs():
    # JAX_PLATFORMS naming an accelerator: LLVM's options would reach its code
    # generation too, so only the xla_cpu_* flags are added (nothing runs on it here)
    env = dict(JAXCNN_CPU_TUNING="flags", XLA_FLAGS=None)
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, jaxcnn.cputune as t; t.apply(); print(os.environ['XLA_FLAGS'])",
        ],
        env={
            k: v
            for k, v in {**os.environ, **env, "JAX_PLATFORMS": "cuda,cpu"}.items()
            if v is not None
        },
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == list(cputune.XLA_CPU_FLAGS)


@pytest.mark.parametrize(
    "platforms, plugins, tpu, expected",
    [
        ("cpu", ["cuda"], True, True),  # JAX_PLATFORMS decides when set
        (" CPU ", [], False, True),
        ("cuda", [], False, False),
        ("cpu,tpu", [], False, False),
        ("", [], False, True),  # unset: nothing installed but the CPU backend
        ("", ["jax_cuda12_plugin"], False, False),  # a PJRT plugin's entry point
        ("", [], True, False),  # libtpu
    ],
)
def test_cpu_only(monkeypatch, platforms, plugins, tpu, expected):
    monkeypatch.setenv("JAX_PLATFORMS", platforms)
    monkeypatch.setattr(
        cputune.importlib.metadata, "entry_points", lambda group: plugins
    )
    real_find_spec = cputune.importlib.util.find_spec

    def find_spec(name):
        if name == "libtpu":
            return object() if tpu else None
        if name == "jax_plugins":
            return None
        return real_find_spec(name)

    monkeypatch.setattr(cputune.importlib.util, "find_spec", find_spec)
    assert cputune.cpu_only() is expected
    flags = cputune.xla_flags()
    assert (cputune.XLA_CPU_ONLY_FLAGS[0] in flags) is expected
    assert flags[: len(cputune.XLA_CPU_FLAGS)] == cputune.XLA_CPU_FLAGS


def test_users_own_setting_of_a_flag_wins():
    mine = "--xla_cpu_use_fusion_emitters=true --xla_backend_extra_options=-disable-lsr=false"
    result = _probe(JAXCNN_CPU_TUNING=None, XLA_FLAGS=mine, JAX_PLATFORMS="cpu")
    assert result["xla_flags"] == mine
    assert result["computed"] == 14.0


def test_invalid_choice_applies_nothing_and_is_a_usage_error(monkeypatch, capsys):
    result = _probe(JAXCNN_CPU_TUNING="fast", XLA_FLAGS=None)
    assert result["malloc"] is False and result["flags"] is False
    assert result["xla_flags"] is None
    assert "JAXCNN_CPU_TUNING='fast'" in result["error"]
    # the CLI turns it into exit 2 with the variable, the value and the choices
    monkeypatch.setattr(cputune, "_state", {})
    monkeypatch.setenv("JAXCNN_CPU_TUNING", "fast")
    assert main(["summary", "keras_mnist"]) == 2
    err = capsys.readouterr().err
    assert "JAXCNN_CPU_TUNING='fast'" in err and "on, off, malloc, flags" in err
    with pytest.raises(cputune.JaxcnnError, match="JAXCNN_CPU_TUNING"):
        cputune.apply()


def test_idempotent_and_reports_state():
    first = cputune.apply()
    assert cputune.apply() == first == cputune.active()
