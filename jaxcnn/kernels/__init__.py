"""Convolution and pooling kernels, and the plan of which one each layer runs.

`conv` (XLA, im2col, Winograd), `pool` (every pooling kind, the fast max-pool VJP, the
fused ReLU + max-pool) and `plan` (per layer, per backend, per input shape: conv/pool
implementation, border crop, ReLU + pool fusion, loop rolling). The names below are the
ones other modules use.
"""

from jaxcnn.kernels.conv import (
    CONV_IMPLS,
    WINOGRAD_MIN_CHANNELS,
    ConvImpl,
    conv2d,
    winograd_applies,
    winograd_tile,
)
from jaxcnn.kernels.plan import (
    BorderCrop,
    KernelChoice,
    LayerPlan,
    ModelPlan,
    border_crop,
    choose_impl,
    dead_border,
    input_plan,
    layer_plan,
    model_plan,
)
from jaxcnn.kernels.pool import (
    POOL_IMPLS,
    PoolImpl,
    PoolKind,
    pool2d,
    relu_max_pool,
)
from jaxcnn.kernels.windows import Pads, out_size

__all__ = [
    "CONV_IMPLS",
    "POOL_IMPLS",
    "WINOGRAD_MIN_CHANNELS",
    "BorderCrop",
    "ConvImpl",
    "KernelChoice",
    "LayerPlan",
    "ModelPlan",
    "Pads",
    "PoolImpl",
    "PoolKind",
    "border_crop",
    "choose_impl",
    "conv2d",
    "dead_border",
    "input_plan",
    "layer_plan",
    "model_plan",
    "out_size",
    "pool2d",
    "relu_max_pool",
    "winograd_applies",
    "winograd_tile",
]
