#!/usr/bin/env bash
# The GPU figures in one run (bench/gpu.py): bare diffusers and sdapi serve side by side, on
# full-size SD 1.5 and SDXL built offline with random weights, without and with --compile.
# Without CUDA it runs the built-in tiny models at 64 px instead, so a CPU (and CI) can run it
# end to end. Extra arguments go to bench/gpu.py (e.g. --no-compile, --steps 30).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
if "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  exec "$python" bench/gpu.py "$@"
fi
exec "$python" bench/gpu.py --tiny --steps 4 --clients 4 --jobs 8 --probes 2 "$@"
