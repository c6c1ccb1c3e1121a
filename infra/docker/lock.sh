#!/usr/bin/env sh
# Regenerates requirements.lock: every dependency of pyproject.toml pinned for the image's
# Python (3.11, manylinux x86_64). torch and its CUDA wheels are left out on purpose: the
# Dockerfile installs torch==2.13.0 (pinned in pyproject.toml) from the PyTorch index of the
# TORCH_VARIANT build argument (cpu by default, e.g. cu128 for GPU workers).
# Needs uv (`python3.11 -m pip install uv`). Run from the repository root:  sh infra/docker/lock.sh
set -eu
cd "$(dirname "$0")/../.."
uv pip compile pyproject.toml \
  --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
  --custom-compile-command "sh infra/docker/lock.sh" \
  --no-emit-package torch --no-emit-package triton \
  $(uv pip compile pyproject.toml --python-version 3.11 --python-platform x86_64-manylinux_2_28 --quiet \
      --no-header --no-annotate | sed -n 's/^\(nvidia-[a-z0-9-]*\|cuda-[a-z-]*\)==.*/--no-emit-package \1/p') \
  -o infra/docker/requirements.lock
