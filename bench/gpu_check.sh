#!/usr/bin/env bash
# GPU readiness check: runs bench/gpu_check.py (see its docstring) from any working directory.
#
#   bash bench/gpu_check.sh [--out gpu_check.json]          # on a CUDA machine
#   bash bench/gpu_check.sh --dry-run --out /tmp/check.json  # CPU, tiny sizes (checks the script)
#
# Python: $PYTHON if set, else the repository's .venv, else python3 on the PATH (a GPU machine's
# own torch). The repository goes first on PYTHONPATH, so ltmodels imports without installing.
# A relative --out is relative to the caller's working directory. Exit status: 0 all sections
# ok, 1 a section failed (the JSON says which), 2 no CUDA device without --dry-run.
set -euo pipefail
bench="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$bench")"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    if [[ -x "$root/.venv/bin/python" ]]; then
        python="$root/.venv/bin/python"
    else
        python="python3"
    fi
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "$python" "$bench/gpu_check.py" "$@"
