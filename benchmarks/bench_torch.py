"""PyTorch worker: eager mode, channels_last or NCHW, Adam, one step per call.

python benchmarks/bench_torch.py MODEL VARIANT

VARIANT: channels_last | nchw | channels_last_bf16 (forward and loss under
`torch.autocast("cpu", dtype=torch.bfloat16)`: bf16 convs and matmuls, fp32 weights
and optimiser).
"""

from __future__ import annotations

import contextlib
import sys
import time

T_START = time.perf_counter()

import bench_common  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402


def keras_mnist() -> tuple[nn.Module, tuple[int, int, int]]:
    """Conv32-Pool-Conv64-Pool-Conv64-Flatten-Dense64-Dense10 (93,322 params)."""
    net = nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3), nn.ReLU(),
        nn.Flatten(), nn.Linear(576, 64), nn.ReLU(), nn.Linear(64, 10),
    )  # fmt: skip
    return net, (1, 28, 28)


def vgg_cifar() -> tuple[nn.Module, tuple[int, int, int]]:
    """conv3x3 same 64,64, pool, 128,128, pool, 256,256, pool, dense 10 (1,186,378)."""
    mods, cin = [], 3
    for f in (64, 128, 256):
        mods += [nn.Conv2d(cin, f, 3, padding=1), nn.ReLU()]
        mods += [nn.Conv2d(f, f, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        cin = f
    mods += [nn.Flatten(), nn.Linear(256 * 4 * 4, 10)]
    return nn.Sequential(*mods), (3, 32, 32)


def make_runner(model_name: str, variant: str):
    torch.manual_seed(0)
    net, (c, h, w) = {"keras_mnist": keras_mnist, "vgg_cifar": vgg_cifar}[model_name]()
    channels_last = variant.startswith("channels_last")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    autocast = (
        (lambda: torch.autocast("cpu", dtype=torch.bfloat16))
        if variant.endswith("_bf16")
        else contextlib.nullcontext
    )
    net = net.to(memory_format=fmt)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    n, b = bench_common.NUM_BATCHES, bench_common.BATCH
    xs = [torch.rand(b, c, h, w).contiguous(memory_format=fmt) for _ in range(n)]
    ys = [torch.randint(0, 10, (b,)) for _ in range(n)]
    state = {"i": 0}

    def run_calls(calls: int) -> None:
        for _ in range(calls):
            i = state["i"] % n
            opt.zero_grad(set_to_none=True)
            with autocast():
                loss = loss_fn(net(xs[i]), ys[i])
            loss.backward()
            opt.step()
            state["i"] += 1

    t0 = time.perf_counter()
    run_calls(1)
    first = time.perf_counter() - t0
    params = sum(p.numel() for p in net.parameters())
    info = {
        "steps_per_call": 1,
        "since_start_s": time.perf_counter() - T_START,
        "threads": torch.get_num_threads(),
        "params": params,
        "version": torch.__version__,
        "precision": "bfloat16 autocast" if variant.endswith("_bf16") else "float32",
    }
    return run_calls, b, first, info


if __name__ == "__main__":
    bench_common.serve(lambda: make_runner(sys.argv[1], sys.argv[2]))
