"""The datasets a sweep worker keeps loaded between trials (trials on one dataset and
input shape share one load)."""

from __future__ import annotations

import json
from typing import Any

from jaxcnn.spec import RunConfig


class DatasetCache:
    """The last `size` datasets loaded, by data config and input shape."""

    def __init__(self, size: int = 2):  # bounded memory in long mixed sweeps
        self.size = size
        self.loaded: dict[str, Any] = {}

    def get(self, run_config: RunConfig) -> Any:
        """The dataset `run_config` trains on, loaded once."""
        from jaxcnn import data, train

        input_shape = train.resolve_spec(run_config).input_shape
        key = json.dumps(
            [run_config.to_dict()["data"], list(input_shape)], sort_keys=True
        )
        if key not in self.loaded:
            if len(self.loaded) >= self.size:
                self.loaded.pop(next(iter(self.loaded)))
            self.loaded[key] = data.load_dataset(
                run_config.data, input_shape=input_shape
            )
        return self.loaded[key]
