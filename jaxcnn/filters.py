"""The classic hand-set 3x3 image kernels (edges, Sobel, Laplacian, blur, sharpen).

One table serves both the conv layers (`ConvSpec(init="sobel_x")`, see layers.py) and
`jaxcnn viz edges`. Nothing here imports JAX.

Kernels are written as they are *applied*: Flax/XLA convolutions are cross-correlations
(out[i, j] = sum_{u,v} K[u, v] * x[i + u, j + v], no kernel flip), so with these kernels

- ``vertical_edge`` / ``sobel_x`` are positive where the intensity rises from left to
  right (a dark-to-bright vertical edge), negative for bright-to-dark, zero on flat areas;
- ``horizontal_edge`` / ``sobel_y`` are positive where it rises from top to bottom;
- ``laplacian`` is zero on flat areas and linear ramps; ``box_blur`` averages 3x3
  neighbourhoods (sums to 1); ``sharpen`` sums to 1, so flat areas pass unchanged.
"""

from __future__ import annotations

import numpy as np

CLASSIC_KERNELS: dict[str, np.ndarray] = {
    # Prewitt operators, as in the edge-detection tutorials
    "vertical_edge": np.array([[-1, 0, 1], [-1, 0, 1], [-1, 0, 1]], np.float32),
    "horizontal_edge": np.array([[-1, -1, -1], [0, 0, 0], [1, 1, 1]], np.float32),
    "sobel_x": np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32),
    "sobel_y": np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]], np.float32),
    "laplacian": np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float32),
    "box_blur": np.full((3, 3), 1.0 / 9.0, np.float32),
    "sharpen": np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], np.float32),
}
CLASSIC_NAMES = tuple(CLASSIC_KERNELS)


def classic_kernel(name: str) -> np.ndarray:
    """The 3x3 float32 kernel called `name` (a copy, safe to modify).

    Raises:
      KeyError: for an unknown name (specs are validated before they get here).
    """
    return CLASSIC_KERNELS[name].copy()


def conv_kernel(name: str, in_channels: int, filters: int) -> np.ndarray:
    """A conv kernel [3, 3, in_channels, filters] with every filter equal to `name`.

    Each (input channel, filter) slice is the classic kernel divided by `in_channels`, so
    every filter computes the classic kernel applied to the mean of the input channels
    (on a grayscale image: exactly the classic kernel). `in_channels` is the per-group
    count for grouped convolutions.
    """
    kernel = classic_kernel(name) / np.float32(in_channels)
    return np.broadcast_to(
        kernel[:, :, None, None], (3, 3, in_channels, filters)
    ).copy()
