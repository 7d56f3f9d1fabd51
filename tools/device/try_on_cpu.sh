#!/usr/bin/env bash
# Runs tools/device/check.sh on a machine without a GPU, to try the script before spending GPU minutes on it:
# the CPU in place of the GPU, a fixture's tiny transformer in place of Wan2.1-1.3B, a stand-in nvidia-smi,
# and the link-time stand-ins of tools/cuda/setup.sh for the driver. Needs target/device (tools/device/build.sh)
# and a Python with torch and diffusers first on PATH (tools/reference/requirements.txt). Its numbers mean
# nothing; that every step runs and the table is written does.
set -euo pipefail
: "${CUDA_ROOT:?run eval \"\$(bash tools/cuda/setup.sh)\" first}"
fake=$(mktemp -d)
trap 'rm -rf "$fake"' EXIT
cat > "$fake/nvidia-smi" <<'SMI'
#!/usr/bin/env bash
# A stand-in: one GPU with 1000 MiB in use, as the queries check.sh makes.
case "$*" in
  -L) echo "GPU 0: stand-in (no GPU; tools/device/try_on_cpu.sh)" ;;
  *name,driver_version*) echo "stand-in, 0.0, 0 MiB" ;;
  *-lms*) while true; do echo 1000; sleep 0.05; done ;;
  *memory.used*) echo 1000 ;;
  *) exit 1 ;;
esac
SMI
chmod +x "$fake/nvidia-smi"
PATH="$fake:$PATH" LD_LIBRARY_PATH="$CUDA_ROOT/lib/stubs:$CUDA_ROOT/lib" OUT="$fake/out" DEVICE=cpu \
  WEIGHTS=tests/fixtures/wan-tiny-alt/pipeline/transformer BENCH_ARGS="--latent 4,6,8 --cpu" \
  bash tools/device/check.sh 2
