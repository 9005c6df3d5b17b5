"""Sweep scripts: `python -m experiments.NAME` from the repository root, or
`jaxcnn sweep experiments/NAME.py` (which imports them as a package; see
`jaxcnn.sweep.config.load_module`)."""
