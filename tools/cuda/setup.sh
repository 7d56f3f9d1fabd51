#!/usr/bin/env bash
# Makes `cargo build --release --features cuda` work on a machine without a GPU or the CUDA toolkit (CI, a
# laptop): nvcc and CUDA's headers from PyPI into a virtual environment, and link-time stand-ins for the
# libraries a GPU machine has (the driver's libcuda, and cuBLAS, cuRAND, NVRTC). Prints the environment to
# build with:
#
#   eval "$(bash tools/cuda/setup.sh [VENV])"      # VENV defaults to target/cuda-venv
#   cargo build --release --features cuda
#
# Why stand-ins: candle links its CUDA libraries when the program is built (cudarc's `dynamic-linking`),
# and no package outside NVIDIA's driver installer ships libcuda. NVIDIA's own toolkit puts link-only
# "stubs" in lib/stubs for the same reason; these are made the same way, from the function names in
# cudarc's bindings, every function returning an error code. A program built against them runs against the
# real libraries of the machine it runs on (the names below are the CUDA 13 ones). Run with the stand-ins
# themselves (LD_LIBRARY_PATH=.../lib/stubs) it finds no GPU, which tests that error path.
set -euo pipefail

venv=${1:-target/cuda-venv}
# 13.0 matches the GPU machine's driver (580, CUDA 13.0); nvvm pinned, or pip takes a newer one that needs a
# newer driver. cccl carries <nv/target>, which cuda_fp16.h includes.
packages=(nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-crt==13.0.88
  nvidia-nvvm==13.0.88 nvidia-cuda-cccl==13.0.85)

if [ ! -x "$venv/bin/nvcc-root" ]; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${packages[@]}" >&2
  root=$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')
  [ -x "$root/bin/nvcc" ] || { echo "setup.sh: nvcc is not in $root/bin after installing ${packages[*]}" >&2; exit 1; }

  # cudarc's bindings name every function the program may link; its version is the one Cargo.lock pins.
  version=$(awk '/^name = "cudarc"/ {getline; gsub(/"/, "", $3); print $3}' Cargo.lock)
  cargo fetch --quiet >&2
  src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-"$version" | head -n 1)
  [ -d "$src" ] || { echo "setup.sh: cudarc $version's source is not in the cargo registry" >&2; exit 1; }
  stubs="$root/lib/stubs"
  mkdir -p "$stubs"
  # binding folder, name prefix, library, soname on a CUDA 13 machine, error code every function returns
  # (the driver's 100 is CUDA_ERROR_NO_DEVICE: a program run on the stand-ins sees a machine without a GPU;
# cuRAND's 203 is CURAND_STATUS_INITIALIZATION_FAILED).
  while read -r dir prefix lib soname code; do
    c="$stubs/$lib.c"
    # cuRAND's stand-in makes and frees generators (candle makes one with every GPU device) and fails every
    # draw: Sorrel draws its noise on the CPU, so tools/device/check.sh can run with it on a machine whose
    # PyTorch ships no cuRAND.
    grep -oP '^\s+fn \K'"$prefix"'\w+(?=\()' "$src/src/$dir/sys/mod.rs" | sort -u |
      awk -v code="$code" '
        $1 == "curandCreateGenerator" { print "int curandCreateGenerator(void **g, int kind) { *g = (void *)1; return 0; }"; next }
        $1 ~ /^curand(SetStream|SetPseudoRandomGeneratorSeed|DestroyGenerator)$/ { printf "int %s(void) { return 0; }\n", $1; next }
        { printf "int %s(void) { return %s; }\n", $1, code }' > "$c"
    cc -shared -fPIC -Wl,-soname,"$soname" -o "$stubs/$lib.so" "$c"
    rm "$c"
  done <<'EOF'
driver cu libcuda libcuda.so.1 100
nvrtc nvrtc libnvrtc libnvrtc.so.13 1
curand curand libcurand libcurand.so.10 203
cublas cublas libcublas libcublas.so.13 1
cublaslt cublasLt libcublasLt libcublasLt.so.13 1
EOF
  # candle's MoE kernels link the CUDA runtime, which the runtime wheel ships under its soname only.
  ln -sf ../libcudart.so.13 "$stubs/libcudart.so"
  # Stand-ins under their sonames too, so that the dry run (LD_LIBRARY_PATH=$stubs) loads them.
  for so in "$stubs"/libcu{da,blas,blasLt,rand}.so "$stubs"/libnvrtc.so; do
    ln -sf "$(basename "$so")" "$stubs/$(objdump -p "$so" | awk '/SONAME/ {print $2}')"
  done
  ln -sf "$root" "$venv/bin/nvcc-root"
fi
root=$(readlink -f "$venv/bin/nvcc-root")
echo "export CUDA_ROOT='$root' CUDA_PATH='$root' PATH='$root/bin':\"\$PATH\" CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-90}"
