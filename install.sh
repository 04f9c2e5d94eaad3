#!/usr/bin/env bash
# Creates .venv (once) and installs cyto_ssrl into it with the exact versions pinned in constraints.txt.
# torch/torchvision are the registry's CUDA pair (about 6 GB): they run on the CPU and on GPUs alike.
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test]"
