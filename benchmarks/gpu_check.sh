#!/usr/bin/env bash
# The device half of docs/cuda.md: installs onnxruntime-gpu from the four wheel parts uploaded to /tmp/w (as in
# /work/shared/gpu-onnxruntime.md), then runs benchmarks/gpu_check.py on the prepared folder (default .gpu_check).
# One command, well under the 10-minute call limit; exits non-zero on any failed check.
set -euo pipefail
FOLDER=${1:-.gpu_check}
WHEEL=/tmp/w/onnxruntime_gpu-1.30.0-cp312-cp312-manylinux_2_28_x86_64.whl
if [ ! -f /tmp/site/onnxruntime/__init__.py ]; then
  cat /tmp/w/p0? > "$WHEEL"
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$WHEEL"
fi
NV=/opt/torch/.venv/lib/python3.12/site-packages
export LD_LIBRARY_PATH=$(ls -d $NV/nvidia/*/lib 2>/dev/null | tr '\n' ':')${LD_LIBRARY_PATH:-}
export PYTHONPATH=/tmp/site
# The interpreter that has numpy and torch (torch gives the cuBLAS rows), else any with numpy.
PY=python3
for candidate in python3 /opt/torch/.venv/bin/python3; do
  if "$candidate" -c "import numpy, torch" 2>/dev/null; then PY=$candidate; break; fi
done
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
echo "python: $PY ($("$PY" --version 2>&1))"
exec timeout 540 "$PY" benchmarks/gpu_check.py "$FOLDER"
