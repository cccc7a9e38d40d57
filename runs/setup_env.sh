#!/usr/bin/env bash
# Creates the project's virtual environment (.venv) if needed and installs nanochat into it with
# everything it needs. The other runs/ scripts source this file; running it alone is fine too.
#
# On a machine without an NVIDIA GPU it installs the CPU build of PyTorch, so a laptop never
# downloads the multi-GB CUDA build by accident.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "error: nanochat needs Python 3.10 or newer; set PYTHON=/path/to/python3.x" >&2
    exit 2
fi
if [ ! -x .venv/bin/python ]; then
    echo "creating .venv with $("$PYTHON" --version)"
    "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
# pip -q, without its notes about unreachable package locations (errors still show)
pip_install() {
    pip install -q "$@" 2> >(grep -v -e '^WARNING: Retrying' -e '^WARNING: Location' >&2)
}

if ! python -c 'import torch' 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
        echo "installing PyTorch (CUDA build)"
        pip_install "torch==2.13.0"
    else
        echo "installing PyTorch (CPU build)"
        # --retries 1: where the PyTorch index cannot be reached but a local wheel can be used,
        # pip would otherwise spend minutes retrying the index for every dependency
        pip_install --retries 1 "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
    fi
fi

# (re)install the project when pyproject.toml changed since the last install
stamp=.venv/.nanochat-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "installing nanochat and its dependencies into .venv"
    pip_install -e ".[dev]"
    echo "$want" > "$stamp"
fi
