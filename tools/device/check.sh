#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU, PyTorch (CUDA 13 wheels) and no Rust toolchain or network:
#
#   bash tools/device/build.sh            # here: builds target/device (the CUDA program, diffusers' wheels)
#   bash tools/device/check.sh [STEPS]    # there, in a copy of the repository with target/device
#
# 1. Parity: the committed diffusers fixtures generated on the GPU against the CPU and diffusers (fp32 within
#    2e-3 of diffusers; bf16 reported).
# 2. Speed and memory: Wan2.1-T2V-1.3B's transformer (random weights, made there) at 832x480, 81 frames,
#    STEPS steps (default 3) with guidance in bf16, diffusers 0.42.1 then Sorrel on the same card, weights and
#    inputs; per-step time and the GPU's peak memory (nvidia-smi, the same measure for both).
# Writes $OUT (default target/device/out): parity.jsonl, bench.jsonl and table.md, the table docs/benchmarks.md
# quotes. A few minutes on an H200.
set -euo pipefail

steps=${1:-3}
# DEVICE, WEIGHTS and BENCH_ARGS are for trying the script on a machine without a GPU (on the CPU, a
# fixture's tiny transformer and a stand-in nvidia-smi: docs/cuda.md); on the GPU machine leave them unset.
device=${DEVICE:-cuda}
bench_args=${BENCH_ARGS:-}
here=target/device
out=${OUT:-$here/out}
bin=$here/device_check
die() { echo "check.sh: $*" >&2; exit 2; }

if ! command -v nvidia-smi > /dev/null || ! nvidia-smi -L > /dev/null 2>&1; then
  die "no NVIDIA GPU here (nvidia-smi is missing or sees none): this script runs on the GPU machine; on a \
machine without one, \`cargo test\` checks the GPU's paths on the CPU (crates/sorrel-pipeline/tests/generic_kernels.rs)"
fi
if [ ! -x "$bin" ] && [ -f "$bin.xz" ]; then
  python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$bin.xz" "$bin"
  chmod +x "$bin"
fi
[ -x "$bin" ] || die "$bin is missing: run \`bash tools/device/build.sh\` on a machine with Rust and carry $here along"
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"

# The CUDA libraries Sorrel links (cuBLAS, cuRAND, the runtime) from PyPI's nvidia wheels, which PyTorch's
# CUDA 13 builds install. The driver's libcuda must stay the system's: no folder holding a libcuda goes on
# the path.
libs=$(python3 - <<'EOF'
import glob, os
try:
    import nvidia
    roots = list(nvidia.__path__)
except ImportError:
    roots = []
wanted = ("libcublas.so.13", "libcublasLt.so.13", "libcurand.so.10", "libcudart.so.13", "libnvrtc.so.13")
dirs = {os.path.dirname(p) for r in roots for w in wanted for p in glob.glob(os.path.join(r, "**", w), recursive=True)}
print(":".join(sorted(d for d in dirs if not glob.glob(os.path.join(d, "libcuda.so*")))))
EOF
)
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if ldd "$bin" | grep -q "libcurand.so.10 => not found" && [ -f "$here/curand/libcurand.so.10" ]; then
  # Newer PyTorch wheels ship no cuRAND. candle opens a generator with every device and Sorrel never draws
  # from it (its noise is made on the CPU), so the stand-in from build.sh does.
  echo "note: no libcurand.so.10 here; using the stand-in (random numbers cannot be drawn on the GPU)"
  export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$PWD/$here/curand"
fi
if ldd "$bin" | grep -q "not found"; then
  ldd "$bin" | grep "not found" >&2
  die "the libraries above are missing: PyTorch's CUDA 13 wheels (nvidia-cublas, nvidia-curand, nvidia-cuda-nvrtc) provide them"
fi

if ! python3 -c 'import diffusers' 2> /dev/null; then
  # Offline, from the wheels build.sh fetched; without dependencies if an installed one's version clashes.
  # PIP_BREAK_SYSTEM_PACKAGES: a system Python that forbids pip's installs (PEP 668) still takes these.
  export PIP_BREAK_SYSTEM_PACKAGES=1
  python3 -m pip install --quiet --no-index --find-links "$here/wheels" diffusers==0.42.1 ||
    python3 -m pip install --quiet --no-deps --no-index --find-links "$here/wheels" diffusers==0.42.1 \
      importlib_metadata zipp pillow ||
    die "cannot install diffusers from $here/wheels (run tools/device/build.sh)"
fi

echo "== parity: the fixtures on the GPU against the CPU and diffusers"
# A parity failure is reported at the end: the benchmark still runs, so one turn on the GPU gives everything.
parity=0
"$bin" parity "$device" tests/fixtures | tee "$out/parity.jsonl" || parity=$?

echo "== speed: Wan2.1-T2V-1.3B transformer, 832x480, 81 frames, $steps steps with guidance, bf16"
weights=${WEIGHTS:-/tmp/sorrel-wan21-1.3b-random}
inputs=/tmp/sorrel-bench-inputs.safetensors
: > "$out/bench.jsonl"
# The GPU's memory in use every 50 ms while `$@` runs; prints the peak less what was in use before.
peak() {
  local log base
  log=$(mktemp)
  base=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0)
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 -lms 50 > "$log" &
  local poll=$! rc=0
  "$@" >> "$out/bench.jsonl" || rc=$?
  kill "$poll"
  wait "$poll" 2> /dev/null || true
  echo "{\"peak_gpu_mib\": $(sort -n "$log" | tail -n 1), \"before_mib\": $base}" >> "$out/bench.jsonl"
  rm -f "$log"
  return "$rc"
}
python3 tools/device/bench_diffusers.py make "$weights"
# shellcheck disable=SC2086  # BENCH_ARGS is several words
peak python3 tools/device/bench_diffusers.py run "$weights" "$inputs" "$steps" bf16 $bench_args
bench=0
peak "$bin" bench "$device" "$weights" "$inputs" "$steps" bf16 || bench=$?
python3 tools/device/table.py "$out" | tee "$out/table.md"
[ "$parity" -eq 0 ] || die "parity failed on the GPU (above, and $out/parity.jsonl)"
[ "$bench" -eq 0 ] || die "Sorrel's benchmark run failed (above)"
