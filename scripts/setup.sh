#!/usr/bin/env bash
# One-shot set-up on a fresh machine: Debian packages, a virtual environment in .venv,
# torch==2.13.0 (the local CPU wheel) first, then Tutti and its dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
# g++: torch's AOTInductor builds the compiled live step (model/streaming.py) at run time.
for pkg in libfluidsynth3 fluid-soundfont-gm musescore-general-soundfont g++; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip
# Torch first: anything that depends on torch would otherwise pull the CUDA build.
.venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null \
    || $PIP install -q torch==2.13.0
$PIP install -q -e ".[dev]"
touch .venv/.tutti-installed
