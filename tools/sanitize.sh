#!/usr/bin/env bash
# The test suite against a build instrumented with AddressSanitizer + UndefinedBehaviorSanitizer.
#
#   tools/sanitize.sh [pytest arguments]      (default: the whole of tests/)
#
# Builds coreformer with -fsanitize=address,undefined on every target -- the scalar, AVX2 and AVX-512
# kernel objects included; CUDA off (nvcc's host pass and ASan do not mix) -- into build/sanitize/site,
# and runs pytest with that build first on the path, libasan preloaded into the (uninstrumented)
# interpreter. Run it in an environment with the test extra installed (pip install ".[test]").
#
# Any ASan report aborts the process (pytest fails); UBSan reports do not stop the run, they are
# written to build/sanitize/logs and the script fails when there is any, printing them. Leak checking
# is off: CPython and torch keep allocations until exit by design (tests/test_soak.py holds our RSS flat).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
out=$root/build/sanitize
site=$out/site
logs=$out/logs
python=${PYTHON:-python}

echo "== building with -fsanitize=address,undefined into $site"
rm -rf "$site" "$logs"
mkdir -p "$logs"
# with the build tools already here the CMake build folder is reused between runs (an isolated build
# environment moves pybind11's path and so rebuilds everything: ~3 minutes)
isolation=()
"$python" -c "import scikit_build_core, pybind11" 2>/dev/null && isolation=(--no-build-isolation)
"$python" -m pip install --quiet --no-deps "${isolation[@]}" --target "$site" \
  -C cmake.define.COREFORMER_SANITIZE=address,undefined -C cmake.define.COREFORMER_CUDA=OFF \
  -C build-dir="$out/cmake" "$root"
so=$(ls "$site"/coreformer/_core*.so)
libs=$(ldd "$so")  # not piped into grep -q: under pipefail, ldd's SIGPIPE would fail the check
for lib in libasan libubsan; do
  [[ $libs == *"$lib"* ]] || { echo "sanitize: $so is not linked with $lib"; exit 1; }
done

# libasan first; libstdc++ beside it, or ASan's __cxa_throw interceptor finds no real __cxa_throw (the
# interpreter does not link libstdc++) and the first C++ exception aborts
cxx=${CXX:-g++}
export LD_PRELOAD=$($cxx -print-file-name=libasan.so):$($cxx -print-file-name=libstdc++.so)${LD_PRELOAD:+:$LD_PRELOAD}
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:allocator_may_return_null=1:${ASAN_OPTIONS:-}
export UBSAN_OPTIONS=print_stacktrace=1:log_path=$logs/ubsan:${UBSAN_OPTIONS:-}
export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
# numpy's OpenBLAS core type forced by the environment slows numpy, not us; leave it to the caller.

"$python" -c "import coreformer, sys; assert coreformer.__file__.startswith('$site'), coreformer.__file__; print('sanitize: testing', coreformer.__file__, coreformer.info())"

# Left out: the qemu runs (test_portability: qemu's emulated CPU under a preloaded libasan) and the RSS
# measurements (test_memory, the leak soak: ASan's shadow memory and quarantine are what they would see),
# and the type checks (no C++ of ours runs in them).
status=0
# -p no:faulthandler: pytest's SIGSEGV handler would print a Python stack and abort before ASan's report
"$python" -m pytest -q -p no:cacheprovider -p no:faulthandler "${@:-tests}" \
  --deselect tests/test_portability.py --deselect tests/test_memory.py \
  --deselect tests/test_soak.py::test_rss_stays_flat_over_every_op_and_model \
  --deselect tests/test_soak.py::test_the_leak_measurement_sees_a_leak \
  --deselect tests/test_typing.py || status=$?

if ls "$logs"/ubsan* >/dev/null 2>&1; then
  echo "== UndefinedBehaviorSanitizer reports:"
  cat "$logs"/ubsan*
  status=1
fi
[ "$status" = 0 ] && echo "sanitize: clean under AddressSanitizer + UndefinedBehaviorSanitizer"
exit "$status"
