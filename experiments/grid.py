"""The full filters x stride x pooling grid on MNIST and Fashion-MNIST.

python experiments/grid.py --workdir runs/grid    (or: jaxcnn sweep experiments/grid.py)
python experiments/grid.py --smoke                finishes in seconds (digits)
~20 min on 2 CPU cores when idle (measured ~30 min with other jobs sharing them; see
experiments/results/grid): 2 datasets x 3 filter counts x 3 strides x 3 pooling choices
(54 points; the 12 stride-3 + pooling points shrink the map below the pool window and
are recorded invalid at no cost), simple_cnn of depth 2, 2 epochs on the first 4,000
training images (validation: 10 % carved from train; test: the full test split).
Expect: accuracy rises with filters; stride 1 + max pooling or stride 2 without pooling
are the efficient choices (MNIST ~92-94 %, Fashion ~74-78 % after this short training);
stride 2 + pooling shrinks the maps to 1x1 and loses 15-45 points; max pooling beats avg
by 1-3 points; stride 1 without pooling is the most accurate but 10-20x the parameters.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import _common  # noqa: E402

SETTINGS = {"name": "grid"}


def base(smoke: bool = False):
    return _common.base_config(smoke, epochs=2, train_examples=4000)


def sweep(smoke: bool = False) -> list[dict]:
    filters = (4, 8) if smoke else (8, 16, 32)
    strides = (1, 2) if smoke else (1, 2, 3)
    pools = ("max", "none") if smoke else ("max", "avg", "none")
    return [
        {
            **_common.dataset_point(name),
            "model.filters": f,
            "model.stride": s,
            "model.pool": p,
        }
        for name in _common.datasets(smoke)
        for p in pools
        for s in strides
        for f in filters
    ]


if __name__ == "__main__":
    _common.main(__file__)
