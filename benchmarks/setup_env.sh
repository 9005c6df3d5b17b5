#!/usr/bin/env bash
# Creates the benchmark environment: a SEPARATE venv with PyTorch (CPU build), Keras 3 on
# TensorFlow, JAX/Flax and jaxcnn (editable), so that torch never enters the main venv.
#
#   bash benchmarks/setup_env.sh [VENV_DIR]        # default: .venv-bench (git-ignored)
#
# torch is pinned to the CPU wheel (torch==2.13.0, found in the local wheel folder on the
# benchmark machines); a plain `pip install torch` may pull several GB of CUDA libraries.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-bench}"
PY="${PYTHON:-python3.11}"
"$PY" -m venv "$VENV"
"$VENV/bin/pip" install --upgrade pip wheel setuptools
"$VENV/bin/pip" install "torch==2.13.0"
"$VENV/bin/pip" install "jax==0.10.2" "flax==0.12.8" "optax==0.2.8" \
  "keras==3.15.1" "tensorflow-cpu==2.21.0" "numpy" "psutil"
"$VENV/bin/pip" install -e .
"$VENV/bin/python" - <<'PY'
import importlib
for name in ("torch", "keras", "tensorflow", "jax", "flax", "optax", "jaxcnn"):
    mod = importlib.import_module(name)
    print(f"{name:12s} {getattr(mod, '__version__', '?')}")
PY
