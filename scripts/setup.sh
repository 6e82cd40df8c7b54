#!/usr/bin/env bash
# Set up mirror_sfm on a fresh machine: system packages (apt, when root) and a virtual environment .venv
# with the package and its test tools. Idempotent: a second run only checks. Offline-safe: torch comes
# from a local CPU wheel when one lies in $PIP_FIND_LINKS or /opt/wheels (plain PyPI torch pulls GBs of CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MIRROR_VENV:-.venv}
STAMP="$VENV/.mirror_sfm-installed"
if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  # libgomp1: OpenMP runtime used by torch/faiss/pycolmap wheels; libegl/libgl: offscreen rendering (gtgen)
  missing=""
  for pkg in libgomp1 libegl1 libegl-mesa0 libgl1-mesa-dri libgl1; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
  done
  if [ -n "$missing" ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  fi
fi
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
wheel=""
for dir in ${PIP_FIND_LINKS:-} /opt/wheels; do
  [ -d "$dir" ] || continue
  wheel=$(ls "$dir"/torch-*cpu*.whl 2>/dev/null | sort -V | tail -n 1 || true)
  [ -n "$wheel" ] && break
done
if [ -n "$wheel" ]; then
  "$VENV/bin/python" -m pip install -q "$wheel"
elif ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  # no local wheel: take PyTorch's CPU build
  "$VENV/bin/python" -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu || \
    "$VENV/bin/python" -m pip install -q "torch>=2.3"
fi
# dev: pytest, ruff, matplotlib; gtgen: the mesh packages of `gtgen` (trimesh, embreex, pyrender), which tests use
"$VENV/bin/python" -m pip install -q -e ".[dev,gtgen]"
touch "$STAMP"
echo "mirror_sfm installed in $VENV"
