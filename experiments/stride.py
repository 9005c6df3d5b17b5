"""Strided convolution vs pooling as the down-sampler: stride 1/2/3, with and without pooling.

python -m experiments.stride --workdir runs/stride   (or: jaxcnn sweep experiments/stride.py)
python -m experiments.stride --smoke                 finishes in seconds (digits)
~8 min on 2 CPU cores: stride 1, 2, 3 x pool max / none x MNIST / Fashion-MNIST,
simple_cnn depth 2 with 32 filters, 2 epochs on the first 4,000 training images.
Stride 3 with 2x2 pooling shrinks 28x28 below the second pool window: recorded invalid.
Expect: stride 1 + pooling is the accuracy reference; stride 2 without pooling reaches
nearly the same accuracy for fewer FLOPs (the conv itself downsamples); stride 1
without pooling keeps large maps, so the flatten->dense layer holds most parameters;
stride 3 loses accuracy from skipped pixels.
"""

from . import _common

SETTINGS = {"name": "stride"}


def base(smoke: bool = False):
    return _common.base_config(smoke, epochs=2, train_examples=4000, filters=32)


def sweep(smoke: bool = False) -> list[dict]:
    return [
        {**_common.dataset_point(name), "model.stride": s, "model.pool": p}
        for name in _common.datasets(smoke)
        for p in ("max", "none")
        for s in (1, 2, 3)
    ]


if __name__ == "__main__":
    _common.main(__file__)
