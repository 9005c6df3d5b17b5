"""memory.py: the per-device memory budget (XLA's limit, or a share of the host's RAM)."""

import os

import jax
import pytest

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


def _xla_over_estimate(spec, batch_size: int) -> float:
    """XLA's memory analysis of the compiled train step (temporaries, arguments and
    outputs) over `footprint.memory_estimate` (Adam, the default optimiser)."""
    from flax import nnx

    from jaxcnn import footprint, models, optim, shapes, train
    from jaxcnn.spec import RunConfig

    config = RunConfig()
    model = models.build_model(spec)
    tx, _ = optim.make_optimizer(config.optim, steps_per_epoch=10, epochs=1)
    steps = train.Steps(model, nnx.Optimizer(model, tx, wrt=nnx.Param), config, 1)
    steps.compile_train(batch_size, spec.input_shape)
    xla = steps.memory()
    measured = xla["temp_bytes"] + xla["argument_bytes"] + xla["output_bytes"]
    return measured / footprint.memory_estimate(shapes.infer(spec), batch_size)["total"]


def _generated(conv: dict, *more: dict):
    from jaxcnn.spec import ModelSpec

    layers = [{"type": "conv", "activation": "relu", **conv}, *more]
    return ModelSpec(
        input_shape=(28, 28, 1),
        num_classes=10,
        layers=[*layers, {"type": "flatten"}, {"type": "dense", "units": 10}],
        name=str(conv),
    )


# The band XLA's figure is allowed around the estimate: the estimate names the large
# buffers of a train step, XLA fuses some away (patches inside Winograd's transforms)
# and keeps others (each optimiser update's copies). Measured on AMD EPYC Zen 3 (XLA
# / estimate): keras_mnist 0.72, vgg_cifar 0.77, lenet5 1.46, digits_cnn 0.73,
# resnet_cifar 1.17 (its compile takes minutes: left out here), single wide convs
# 0.9-1.1.
BAND = (0.6, 1.6)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, batch_size",
    [("keras_mnist", 128), ("vgg_cifar", 64), ("lenet5", 256), ("digits_cnn", 128)],
)
def test_memory_estimate_matches_xla_on_the_presets(name, batch_size):
    from jaxcnn import models

    ratio = _xla_over_estimate(models.preset(name), batch_size)
    assert BAND[0] <= ratio <= BAND[1], f"{name}: XLA / estimate = {ratio:.2f}"


@pytest.mark.slow
@pytest.mark.parametrize(
    "spec",
    [
        _generated({"filters": 32}),
        _generated({"filters": 256}),
        _generated({"filters": 64, "kernel": 5}),
        _generated({"filters": 64, "stride": 2}),
        _generated({"filters": 16, "kernel": 7}),
        _generated({"filters": 64}, {"type": "pool", "window": 2}),
        _generated(
            {"filters": 32},
            {"type": "norm", "norm": "batch"},
            {"type": "conv", "filters": 64, "padding": "same", "activation": "relu"},
            {"type": "pool", "window": 2},
        ),
    ],
    ids=lambda spec: spec.name,
)
def test_memory_estimate_matches_xla_on_generated_networks(spec):
    """The wide single convolution is the case the estimate once missed by 3x (the
    gradient buffers of a large activation)."""
    ratio = _xla_over_estimate(spec, 256)
    assert BAND[0] <= ratio <= BAND[1], f"{spec.name}: XLA / estimate = {ratio:.2f}"


@pytest.mark.slow
def test_the_memory_estimate_of_a_very_wide_convolution_is_not_low():
    """65,536 3x3 filters on 8x8 digits at batch 1,024: the first step allocated 51.6 GB
    when the estimate said 16.1 GiB (activations only). Compiled, not run."""
    from jaxcnn.spec import ModelSpec

    spec = ModelSpec(
        input_shape=(8, 8, 1),
        num_classes=10,
        layers=[
            {"type": "conv", "filters": 65536, "padding": "same", "activation": "relu"},
            {"type": "flatten"},
            {"type": "dense", "units": 10},
        ],
    )
    ratio = _xla_over_estimate(spec, 1024)  # 1.01 on AMD EPYC Zen 3
    assert BAND[0] <= ratio <= BAND[1], f"XLA / estimate = {ratio:.2f}"
