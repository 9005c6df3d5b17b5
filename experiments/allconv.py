"""Pooling vs strided convolution as the downsampler, at equal depth and parameter count.

python -m experiments.allconv --workdir runs/allconv   (or: jaxcnn sweep experiments/allconv.py)
JAXCNN_BUDGET=long python -m experiments.allconv --workdir runs/allconv-long
python -m experiments.allconv --smoke                  finishes in seconds (digits)

The question of Springenberg et al., "Striving for Simplicity: The All Convolutional Net"
(2014): is max pooling needed, or can a convolution learn to downsample? Two stages of
two 3x3 'same' convolutions (16 then 32 filters, ReLU), each stage halving the map
(28x28 -> 14x14 -> 7x7), then global average pooling and a dense layer to the 10 logits.
Only the downsampler differs:

  variant   downsampler of each stage              conv layers  params (28x28x1)
  pool-max  2x2 max pool after the second conv          4           16,698
  pool-avg  2x2 average pool after the second conv      4           16,698
  strided   the second conv has stride 2 (no pool)      4           16,698
  allconv   an extra 3x3 stride-2 conv (All-CNN)        6           28,266
  convpool  an extra 3x3 stride-1 conv, then max pool   6           28,266

pool-max / pool-avg / strided have the same depth and exactly the same parameters
(stride and pooling add none); allconv ("All-CNN") pays +69 % parameters for its
learned downsampler, and convpool is the paper's control with those same extra
parameters but max pooling, separating "more parameters" from "learned downsampling".
MNIST and Fashion-MNIST, 6 seeds per point (the report ranks by the mean and marks the
variants whose 95 % intervals overlap the best's; 3 seeds left every comparison that
one budget resolved unresolved at the other), Adam 1e-3, batch 64; budgets
(JAXCNN_BUDGET, BUDGETS below): short (default) = 3 epochs on the first 12,000 training
images, long = 6 epochs on the first 24,000 (these global-pooling networks learn slowly, so the
grid's short budget would rank noise).
~12-20 min on 2 CPU cores at the short budget, ~45-50 min at the long one (60 fits).
Expect the six-layer variants (allconv, convpool) ahead of the four-layer ones, and
max pooling level with strided convolution at equal parameters. The paper (on CIFAR)
found strided costing a little and All-CNN matching or beating max pooling. Measured
results and their reading: experiments/results/allconv/README.md.
"""

from jaxcnn import RunConfig, spec

from . import _common

SETTINGS = {"name": "allconv", "seeds": 6}
# JAXCNN_BUDGET -> epochs and training images (the first N of the train split)
BUDGETS = {
    "short": {"epochs": 3, "train_examples": 12000},
    "long": {"epochs": 6, "train_examples": 24000},
}
VARIANTS = ("pool-max", "pool-avg", "strided", "allconv", "convpool")


def _conv(filters: int, stride: int = 1) -> spec.ConvSpec:
    return spec.ConvSpec(
        filters=filters, kernel=3, stride=stride, padding="same", activation="relu"
    )


def model_spec(
    variant: str, input_shape: tuple[int, int, int], widths: tuple[int, ...] = (16, 32)
) -> spec.ModelSpec:
    """The network of one variant: per stage of `widths`, two convs and a downsampler."""
    layers: list = []
    for w in widths:
        if variant in ("pool-max", "pool-avg"):
            layers += [_conv(w), _conv(w), spec.PoolSpec(pool=variant[5:], window=2)]
        elif variant == "strided":
            layers += [_conv(w), _conv(w, stride=2)]
        elif variant == "allconv":
            layers += [_conv(w), _conv(w), _conv(w, stride=2)]
        elif variant == "convpool":
            layers += [
                _conv(w),
                _conv(w),
                _conv(w),
                spec.PoolSpec(pool="max", window=2),
            ]
        else:
            raise ValueError(f"unknown variant {variant!r}; use one of {VARIANTS}")
    layers += [spec.GlobalPoolSpec(pool="avg"), spec.DenseSpec(units=10)]
    return spec.ModelSpec(
        input_shape=input_shape, num_classes=10, layers=tuple(layers), name=variant
    )


def _widths(smoke: bool) -> tuple[int, ...]:
    return (8, 16) if smoke else (16, 32)


def base(smoke: bool = False) -> RunConfig:
    name = "digits" if smoke else "mnist"
    trained = {"epochs": 1, "train_examples": 512} if smoke else _common.budget(BUDGETS)
    model = model_spec("pool-max", _common.SHAPES[name], _widths(smoke))
    return RunConfig.from_dict(
        {
            "model": {"spec": model.to_dict()},
            "data": {
                "dataset": name,
                "data_dir": None if smoke else _common.DATA_DIR,
                "train_examples": trained["train_examples"],
            },
            "optim": {"optimizer": "adam", "lr": 1e-3},
            "train": {
                "epochs": trained["epochs"],
                "batch_size": 64,
                "keep_checkpoints": 1,
            },
        }
    )


def sweep(smoke: bool = False) -> list[dict]:
    return [
        {
            "data.dataset": name,
            "model.spec": model_spec(v, _common.SHAPES[name], _widths(smoke)).to_dict(),
        }
        for name in _common.datasets(smoke)
        for v in VARIANTS
    ]


if __name__ == "__main__":
    _common.main(__file__)
