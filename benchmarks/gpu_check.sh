#!/usr/bin/env bash
# The device half of docs/cuda.md: installs onnxruntime-gpu from the four wheel parts uploaded to /tmp/w (as in
# /work/shared/gpu-onnxruntime.md), runs benchmarks/gpu_check.py on the prepared folder (default .gpu_check), then
# tests/test_cuda_ops.py against the same library. One command, well under the 10-minute call limit; exits non-zero
# on any failed check. HALUT_REBUILD=1 first rebuilds the library there from custom_ops/ (sm_90 only, for a fix
# tried on a warm machine without re-preparing the folder). With $OUT set, the whole log is also written there.
set -uo pipefail
FOLDER=${1:-.gpu_check}
LOG=${OUT:-/tmp}/gpu_check.log
exec > >(tee "$LOG") 2>&1
WHEEL=/tmp/w/onnxruntime_gpu-1.30.0-cp312-cp312-manylinux_2_28_x86_64.whl
if [ ! -f /tmp/site/onnxruntime/__init__.py ]; then
  cat /tmp/w/p0? > "$WHEEL" &&
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$WHEEL" || exit 1
fi
NV=/opt/torch/.venv/lib/python3.12/site-packages
export LD_LIBRARY_PATH=$(ls -d $NV/nvidia/*/lib 2>/dev/null | tr '\n' ':')${LD_LIBRARY_PATH:-}
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
if [ "${HALUT_REBUILD:-0}" = 1 ]; then
  cmake -S custom_ops -B /tmp/halut_build -G Ninja -DCMAKE_BUILD_TYPE=Release -DHALUT_ONNX_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90-real >/tmp/cmake.log &&
    cmake --build /tmp/halut_build >>/tmp/cmake.log || { tail -40 /tmp/cmake.log; exit 1; }
  cp "$(find /tmp/halut_build -name 'libhalut_ops.so' | head -1)" "$FOLDER/libhalut_ops.so"
fi
# The interpreter that has numpy and torch (torch gives the cuBLAS rows), else any with numpy.
PY=python3
for candidate in python3 /opt/torch/.venv/bin/python3; do
  if "$candidate" -c "import numpy, torch" 2>/dev/null; then PY=$candidate; break; fi
done
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
echo "python: $PY ($("$PY" --version 2>&1))"
timeout 420 "$PY" benchmarks/gpu_check.py "$FOLDER"
status=$?
echo
echo "== tests/test_cuda_ops.py (library $FOLDER/libhalut_ops.so)"
HALUT_ONNX_LIBRARY=$PWD/$FOLDER/libhalut_ops.so timeout 120 "$PY" -m pytest -q -p no:cacheprovider \
  tests/test_cuda_ops.py 2>&1 | tail -25
[ "${PIPESTATUS[0]}" = 0 ] || status=1
# Other builds of the library for A/B speed runs (experiments): $FOLDER/variants/*.so, speed tables only.
for variant in "$FOLDER"/variants/*.so; do
  [ -f "$variant" ] || continue
  echo
  echo "== variant $(basename "$variant")"
  timeout 120 "$PY" benchmarks/gpu_check.py --speed-only --library "$variant" "$FOLDER" | sed -n '/== kernels/,$p'
done
if [ "${HALUT_NCU:-0}" = 1 ] && command -v ncu >/dev/null; then
  # Where the row-major lookup's time goes (N = 65536, 512 x 512, C = 32): one kernel, Speed Of Light and
  # memory sections.
  echo
  echo "== ncu: lookup_kernel"
  timeout 150 ncu --target-processes all -k regex:lookup_kernel -c 1 --section SpeedOfLight \
    --section MemoryWorkloadAnalysis --section Occupancy --section WarpStateStats \
    --metrics l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum,smsp__inst_executed_op_shared_ld.sum,l1tex__t_requests_pipe_lsu_mem_global_op_st.sum,l1tex__t_sectors_pipe_lsu_mem_global_op_st.sum,l1tex__t_requests_pipe_lsu_mem_global_op_ld.sum,l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum,sm__cycles_elapsed.avg \
    "$PY" benchmarks/gpu_check.py --profile-lookup "$FOLDER" 2>&1 | grep -v "^==PROF==" | tail -90
  echo "== ncu: lookup_kernel stall reasons (warps stalled per issued instruction) and instructions"
  timeout 90 ncu --target-processes all -k regex:lookup_kernel -c 1 --metrics \
    'regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio',smsp__inst_executed.sum,smsp__inst_executed_op_shared_ld.sum \
    "$PY" benchmarks/gpu_check.py --profile-lookup "$FOLDER" 2>&1 | grep -E "smsp__" | awk '$NF+0 >= 0.05 || /inst_executed/'
  echo "== SASS instruction mix of the shared-memory lookup kernel (tile 128)"
  command -v cuobjdump >/dev/null && cuobjdump -sass "$FOLDER/libhalut_ops.so" 2>/dev/null |
    awk '/Function : .*lookup_kernelILi128ELb1E/ {on=1; next} /Function :/ {on=0} on' |
    grep -oE '^ +/\*[0-9a-f]{4}\*/ +(@!?U?P[0-9T] +)?[A-Z0-9_.]+' | awk '{print $NF}' | sort | uniq -c | sort -rn | head -30
fi
exit $status
