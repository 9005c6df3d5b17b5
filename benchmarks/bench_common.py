"""Worker side of the step benchmark: timing windows, CPU contention, peak memory.

A worker is one subprocess per (framework variant, model). It builds its model, times the
first step, then answers commands on stdin with one JSON line each on the protocol pipe:

  {"cmd": "window", "seconds": S}  -> {"images_per_s", "seconds", "steps", "other_cores"}
  {"cmd": "quit"}                  -> {"peak_rss_mb"}

Idle workers block on stdin, so the orchestrator can alternate frameworks window by
window without any of them recompiling, and without them competing for the 2 cores.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence

# Synthetic data: this many distinct batches stay resident and are cycled through.
NUM_BATCHES = 8
BATCH = 128
# The ImageNet-size presets (224x224x3, 1000 classes) train at a smaller batch: a step
# of VGG16 at batch 128 takes minutes on a 2-core CPU.
IMAGENET_MODELS = ("resnet50", "vgg16")
IMAGENET_BATCH = 16
# step_bench.py --batch N sets this for its workers: every model at batch N
BATCH_ENV = "JAXCNN_BENCH_BATCH"


def batch_for(model: str) -> int:
    """The batch size every framework's worker runs `model` at."""
    if os.environ.get(BATCH_ENV):
        return int(os.environ[BATCH_ENV])
    return IMAGENET_BATCH if model in IMAGENET_MODELS else BATCH


def paired(ours: Sequence[float], theirs: Sequence[float]) -> dict:
    """The per-round ratios ours / theirs with their median, min and max.

    Round r of each sequence was measured close together in time, so a drift of the
    machine's speed cancels in the ratio; the median over rounds is the figure to quote.
    """
    ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
    return {
        "ratios": ratios,
        "median": statistics.median(ratios),
        "min": min(ratios),
        "max": max(ratios),
    }


def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is already inside user
    return total - idle, total


def own_cpu_seconds() -> float:
    """CPU seconds of this process, all threads."""
    t = os.times()
    return t.user + t.system


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Protocol:
    """JSON lines on the original stdout; library chatter is sent to stderr."""

    def __init__(self):
        self._out = os.fdopen(os.dup(1), "w", buffering=1)
        os.dup2(2, 1)  # anything printing to stdout (C or Python) goes to stderr
        sys.stdout = sys.stderr

    def send(self, obj: dict) -> None:
        self._out.write(json.dumps(obj) + "\n")
        self._out.flush()

    def commands(self):
        for line in sys.stdin:
            if line.strip():
                yield json.loads(line)


def time_window(run_calls: Callable[[int], None], images_per_call: int, seconds: float):
    """Runs calls for about `seconds` and measures throughput and CPU used by others.

    Calls go in groups of about 0.25 s, each group waiting for its last result only,
    so every framework runs back to back as in a training loop (JAX dispatches
    asynchronously; PyTorch eager and Keras' train_on_batch return when done anyway).
    """
    hz = os.sysconf("SC_CLK_TCK")
    t0 = time.perf_counter()
    run_calls(1)
    group = max(1, int(0.25 / max(time.perf_counter() - t0, 1e-6)))
    busy0, _ = cpu_jiffies()
    own0 = own_cpu_seconds()
    t0 = time.perf_counter()
    calls = 0
    while True:
        run_calls(group)
        calls += group
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            break
    busy1, _ = cpu_jiffies()
    own1 = own_cpu_seconds()
    machine = (busy1 - busy0) / hz
    others = max(0.0, machine - (own1 - own0)) / elapsed
    return {
        "images_per_s": calls * images_per_call / elapsed,
        "seconds": elapsed,
        "calls": calls,
        "other_cores": others,
    }


def serve(setup: Callable[[], tuple[Callable[[int], None], int, float, dict]]) -> None:
    """Worker main loop. `setup()` returns (run_calls, images_per_call, first_s, info).

    `run_calls(n)` runs n train-step dispatches and blocks until they are done.
    """
    proto = Protocol()
    try:
        run_calls, images_per_call, first_s, info = setup()
    except Exception as e:  # report, so the orchestrator can record and go on
        proto.send({"error": f"{type(e).__name__}: {e}"})
        raise
    proto.send({"ready": True, "first_step_s": first_s, **info})
    for cmd in proto.commands():
        if cmd["cmd"] == "window":
            proto.send(time_window(run_calls, images_per_call, cmd["seconds"]))
        elif cmd["cmd"] == "quit":
            proto.send({"peak_rss_mb": peak_rss_mb()})
            return
