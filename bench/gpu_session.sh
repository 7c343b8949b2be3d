#!/usr/bin/env bash
# One device call: build with CUDA, run the GPU tests and `coreformer bench --device cuda`, logs to $OUT.
# Usage (on the lent GPU machine, repository root): bash bench/gpu_session.sh [tests|bench|all] [pytest args...]
# Each step has its own time limit so the call ends inside the tool's 10 minutes and $OUT comes back.
set -u
what=${1:-all}; shift || true
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
{
  date; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  python3 -c "import sys, torch, numpy; print(sys.version); print('torch', torch.__version__, torch.version.cuda, 'numpy', numpy.__version__)"
  python3 -m pip show transformers sentence-transformers 2>/dev/null | grep -E '^(Name|Version)'
  nvcc --version | tail -1; nproc
} 2>&1 | tee "$OUT/env.log"
t0=$(date +%s)
timeout 300 python3 -m pip install --no-build-isolation --no-deps -q . -C cmake.define.COREFORMER_CUDA=ON \
  -C build-dir=/tmp/cfbuild >"$OUT/build.log" 2>&1
rc=$?; echo "build rc=$rc in $(( $(date +%s) - t0 )) s"; tail -5 "$OUT/build.log"
[ $rc -eq 0 ] || exit $rc
python3 -c "import coreformer as cf; print(cf.info())" 2>&1 | tee -a "$OUT/env.log"
cd tests
if [ "$what" = tests ] || [ "$what" = all ]; then
  t0=$(date +%s)
  timeout ${TEST_LIMIT:-240} python3 -m pytest -q -p no:cacheprovider -W ignore --timeout 60 -rfE --tb=short \
    --junitxml="$OUT/junit.xml" test_cuda.py test_tensor.py test_models_device.py "$@" >"$OUT/tests.log" 2>&1
  echo "tests rc=$? in $(( $(date +%s) - t0 )) s"; grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | cut -c1-200 | head -60; tail -3 "$OUT/tests.log"
fi
cd ..
if [ "$what" = bench ] || [ "$what" = all ]; then
  t0=$(date +%s)
  timeout ${BENCH_LIMIT:-200} coreformer bench --device cuda --json "$OUT/bench_cuda.json" >"$OUT/bench.log" 2>&1
  echo "bench rc=$? in $(( $(date +%s) - t0 )) s"; tail -40 "$OUT/bench.log"
fi
