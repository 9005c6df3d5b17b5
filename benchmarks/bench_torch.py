"""PyTorch worker: eager (or torch.compile), channels_last or NCHW, Adam, one step per call.

python benchmarks/bench_torch.py MODEL VARIANT

VARIANT: channels_last | nchw | channels_last_bf16 (forward and loss under
`torch.autocast(device, dtype=torch.bfloat16)`: bf16 convs and matmuls, fp32 weights
and optimiser), each optionally followed by `_forward` (the forward pass alone: eval
mode under `torch.inference_mode()`) and `_compile` (the model through
`torch.compile`; the first step compiles). Runs on the GPU when torch sees one (CUDA),
else on the CPU; a GPU step is synchronised at the end of each group of calls.
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


class _Block(nn.Module):
    """resnet_cifar's basic block: conv-bn-relu-conv-bn + skip (1x1 conv if shapes
    change), relu."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(), nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
        )  # fmt: skip
        changes = stride != 1 or cin != cout
        self.proj = nn.Conv2d(cin, cout, 1, stride) if changes else nn.Identity()

    def forward(self, x):
        return torch.relu(self.body(x) + self.proj(x))


def resnet_cifar() -> tuple[nn.Module, tuple[int, int, int]]:
    """ResNet-20 as jaxcnn's resnet_cifar: stem 16, 3 stages x 3 blocks, avg pool."""
    mods, cin = (
        [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()],
        16,
    )
    for stage, f in enumerate((16, 32, 64)):
        for block in range(3):
            mods.append(_Block(cin, f, 2 if stage > 0 and block == 0 else 1))
            cin = f
    mods += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)]
    return nn.Sequential(*mods), (3, 32, 32)


def imagenet(name: str):
    """torchvision's network of that name (random weights), 224x224x3 input."""

    def build() -> tuple[nn.Module, tuple[int, int, int]]:
        import torchvision

        return getattr(torchvision.models, name)(weights=None), (3, 224, 224)

    return build


NETS = {
    "keras_mnist": keras_mnist,
    "vgg_cifar": vgg_cifar,
    "resnet_cifar": resnet_cifar,
    "resnet50": imagenet("resnet50"),
    "vgg16": imagenet("vgg16"),
}


def make_runner(model_name: str, variant: str):
    torch.manual_seed(0)
    net, (c, h, w) = NETS[model_name]()
    compiled = variant.endswith("_compile")
    variant = variant.removesuffix("_compile")
    forward_only = variant.endswith("_forward")
    variant = variant.removesuffix("_forward")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    channels_last = variant.startswith("channels_last")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    autocast = (
        (lambda: torch.autocast(device, dtype=torch.bfloat16))
        if variant.endswith("_bf16")
        else contextlib.nullcontext
    )
    net = net.to(device=device, memory_format=fmt)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    forward = torch.compile(net) if compiled else net
    n, b = bench_common.NUM_BATCHES, bench_common.batch_for(model_name)
    xs = [
        torch.rand(b, c, h, w, device=device).contiguous(memory_format=fmt)
        for _ in range(n)
    ]
    ys = [torch.randint(0, 10, (b,), device=device) for _ in range(n)]
    state = {"i": 0}

    def run_forward(calls: int) -> None:
        for _ in range(calls):
            with torch.inference_mode(), autocast():
                forward(xs[state["i"] % n])
            state["i"] += 1
        if device == "cuda":
            torch.cuda.synchronize()

    def run_train(calls: int) -> None:
        for _ in range(calls):
            i = state["i"] % n
            opt.zero_grad(set_to_none=True)
            with autocast():
                loss = loss_fn(forward(xs[i]), ys[i])
            loss.backward()
            opt.step()
            state["i"] += 1
        if device == "cuda":
            torch.cuda.synchronize()

    if forward_only:
        net.eval()
    run_calls = run_forward if forward_only else run_train
    t0 = time.perf_counter()
    run_calls(1)
    first = time.perf_counter() - t0
    params = sum(p.numel() for p in net.parameters())
    info = {
        "steps_per_call": 1,
        "mode": "forward" if forward_only else "train",
        "since_start_s": time.perf_counter() - T_START,
        "threads": torch.get_num_threads(),
        "params": params,
        "version": torch.__version__,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "compiled": compiled,
        "precision": "bfloat16 autocast" if variant.endswith("_bf16") else "float32",
    }
    return run_calls, b, first, info


if __name__ == "__main__":
    bench_common.serve(lambda: make_runner(sys.argv[1], sys.argv[2]))
