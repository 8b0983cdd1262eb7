#!/usr/bin/env bash
# Create (or update) ./.venv with gluon-ssd, its pinned dependencies, the deployment runtimes
# (ONNX, ONNX Runtime, OpenVINO, NNCF) and the test tools.
#   MXNET_PACKAGE=mxnet-cu112==1.9.1 bash scripts/setup_env.sh   # for NVIDIA GPUs (CUDA 11.2)
#   PYTHON=python3.10 bash scripts/setup_env.sh                   # another interpreter
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
MXNET_PACKAGE=${MXNET_PACKAGE:-mxnet==1.9.1}
CONSTRAINTS=requirements/constraints-py311.txt
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -c "$CONSTRAINTS" "$MXNET_PACKAGE" -e ".[test,deploy]"
# Fail loudly here rather than in the first test: GluonCV's __init__ hides the real error.
.venv/bin/python - <<'PY'
import mxnet, numpy, gluoncv.model_zoo  # noqa: F401
print(f"gluon-ssd environment ready: mxnet {mxnet.__version__}, numpy {numpy.__version__}")
PY
