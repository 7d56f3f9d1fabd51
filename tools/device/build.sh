#!/usr/bin/env bash
# Builds what `tools/device/check.sh` takes to the GPU machine, into target/device: the CUDA build of
# `device_check` (crates/sorrel-cli/examples/device_check.rs), stripped and compressed, and the wheels of diffusers 0.42.1
# and of what it needs beyond PyTorch and transformers (that machine has no network). Needs Rust, python3
# with pip, and the network (or pip's cache) here; nvcc comes from PyPI (tools/cuda/setup.sh).
set -euo pipefail
eval "$(bash tools/cuda/setup.sh "${CUDA_VENV:-target/cuda-venv}")"
cargo build --release --features cuda -p sorrel-cli --example device_check
mkdir -p target/device/wheels
# Stripped and xz-compressed: candle's GPU kernels (PTX, text) make the program 72 MB, over what a run can carry
# (64 MiB), and 8 MB compressed; check.sh expands it with Python's lzma.
cp target/release/examples/device_check target/device/device_check
strip target/device/device_check
xz -T2 -6 -f target/device/device_check
# cuRAND's stand-in (tools/cuda/setup.sh), for a GPU machine whose PyTorch ships no libcurand: candle opens a
# generator with every device, and Sorrel never draws from it.
mkdir -p target/device/curand
cp "$CUDA_ROOT/lib/stubs/libcurand.so" target/device/curand/libcurand.so.10
# Pillow is compiled per Python version: the GPU machine's is unknown here, so 3.10 to 3.13.
python3 -m pip download --quiet --no-deps -d target/device/wheels diffusers==0.42.1 importlib_metadata zipp
for py in 310 311 312 313; do
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$py" \
    --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d target/device/wheels "pillow==11.3.0"
done
du -sh target/device
echo "carry target/device to the GPU machine and run: bash tools/device/check.sh"
