#!/usr/bin/env bash
# The CUDA build where there is no GPU (CI, any machine without NVIDIA's driver): run against the link-time
# stand-ins of tools/cuda/setup.sh, whose driver reports no GPU, it must say so and how to go on, `--device
# auto` must fall back to the CPU and make the video, and the GPU check must refuse to start. Run after
# `eval "$(bash tools/cuda/setup.sh)"` and `cargo build --release --features cuda`.
set -euo pipefail
: "${CUDA_ROOT:?run eval \"\$(bash tools/cuda/setup.sh)\" first}"
bin=target/release/sorrel
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The stand-ins, and the CUDA runtime of the PyPI wheel (candle's MoE kernels link it).
export LD_LIBRARY_PATH="$CUDA_ROOT/lib/stubs:$CUDA_ROOT/lib"
fail() { echo "dry_run.sh: $*" >&2; exit 1; }
ldd "$bin" | grep -q "libcuda.so.1 => $CUDA_ROOT/lib/stubs" || fail "$bin is not the CUDA build (no libcuda.so.1 linked)"

if "$bin" generate "a red ball bounces on a blue floor" --device cuda -q -o "$tmp/gpu.mp4" 2> "$tmp/err"; then
  fail "--device cuda succeeded without a GPU"
fi
grep -q "sees no GPU" "$tmp/err" && grep -q -- "--device cpu" "$tmp/err" || { cat "$tmp/err" >&2; fail "unclear error without a GPU"; }
[ ! -e "$tmp/gpu.mp4" ] || fail "a file was written although generation failed"
echo "--device cuda without a GPU: $(cat "$tmp/err")"

"$bin" generate "a red ball bounces on a blue floor" --device auto -q -o "$tmp/auto.mp4" > /dev/null
[ -s "$tmp/auto.mp4" ] || fail "--device auto did not fall back to the CPU"
echo "--device auto without a GPU: the CPU made $(stat -c %s "$tmp/auto.mp4") bytes of video"

if out=$(bash tools/device/check.sh 2>&1); then
  fail "tools/device/check.sh ran without a GPU"
fi
echo "$out" | grep -q "no NVIDIA GPU here" || { echo "$out" >&2; fail "tools/device/check.sh failed unclearly"; }
echo "tools/device/check.sh without a GPU: $out"
