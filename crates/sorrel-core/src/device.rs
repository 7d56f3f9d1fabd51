//! Which device the models run on: `--device cpu|cuda[:N]|auto`, opened with errors that say what to do.
//!
//! CUDA is candle's backend behind the `cuda` Cargo feature (`cargo build --release --features cuda`, see
//! `docs/cuda.md`). A build without it still parses `cuda` so that it can say how to get it, rather than
//! calling the flag unknown.

use candle_core::Device;

use crate::{Error, Result};

/// A device as the user names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The CPU (the default: the build every README command makes).
    #[default]
    Cpu,
    /// An NVIDIA GPU by ordinal (`cuda` is `cuda:0`).
    Cuda(usize),
    /// The first GPU when this build has CUDA and the machine has a GPU, else the CPU.
    Auto,
}

impl std::str::FromStr for DeviceChoice {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "cpu" => Ok(Self::Cpu),
            "auto" => Ok(Self::Auto),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Self::Cuda(n)),
                _ => Err(Error::invalid(format!(
                    "`{s}` is not a device: use cpu, cuda, cuda:N (N counts GPUs from 0) or auto"
                ))),
            },
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
            Self::Auto => write!(f, "auto"),
        }
    }
}

/// Whether this build carries candle's CUDA backend.
pub const fn cuda_built() -> bool {
    cfg!(feature = "cuda")
}

/// What to tell someone who asked for a GPU from a CPU-only build.
pub const NOT_BUILT: &str = "this sorrel was built without CUDA: build it with `cargo build --release \
    --features cuda` (needs nvcc: `eval \"$(bash tools/cuda/setup.sh)\"` installs it from PyPI; see \
    docs/cuda.md), or use --device cpu";

impl DeviceChoice {
    /// Opens the device. Errors name the device and what to change: a CPU-only build, a GPU ordinal the
    /// machine does not have, a driver that is missing or does not start.
    pub fn open(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Auto => match gpu_count() {
                Ok(n) if n > 0 => open_cuda(0),
                _ => Ok(Device::Cpu),
            },
            Self::Cuda(n) => {
                if !cuda_built() {
                    return Err(Error::invalid(format!("--device cuda:{n}: {NOT_BUILT}")));
                }
                let count = gpu_count()?;
                if n >= count {
                    let have = match count {
                        0 => "no GPU the driver can see".to_string(),
                        1 => "1 GPU (cuda:0)".to_string(),
                        c => format!("{c} GPUs (cuda:0 to cuda:{})", c - 1),
                    };
                    return Err(Error::invalid(format!(
                        "--device cuda:{n}: this machine has {have}; pick one of those or use --device cpu"
                    )));
                }
                open_cuda(n)
            }
        }
    }
}

/// Set by [`use_generic_kernels`].
static GENERIC_KERNELS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether tensors on `dev` take Sorrel's own CPU kernels (fused attention, packed bf16 products, the
/// shifted convolutions, fused norms): on the CPU, unless [`use_generic_kernels`] turned them off. Everything
/// else runs candle's compositions, which candle runs on every device.
pub fn cpu_kernels(dev: &Device) -> bool {
    dev.is_cpu() && !GENERIC_KERNELS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Runs the CPU on the compositions a GPU takes instead of the CPU kernels, for the whole process. Its use:
/// checking, on a machine without a GPU, the paths a GPU runs against diffusers (a test binary of its own,
/// since it changes every thread's numerics).
pub fn use_generic_kernels(on: bool) {
    GENERIC_KERNELS.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// A short name for logs and reports: `cpu`, or `cuda:0 (NVIDIA H200, 139.8 GiB)`.
pub fn describe(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".to_string(),
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => {
            let ctx = d.cuda_stream().context().clone();
            let name = ctx.name().unwrap_or_else(|_| "GPU".to_string());
            let total = ctx.total_mem().map(|b| gib(b as u64)).unwrap_or_default();
            format!("cuda:{} ({name}, {total})", ctx.ordinal())
        }
        other => format!("{other:?}"),
    }
}

/// The GPU's free and total memory in bytes; `None` on the CPU (whose room `MemAvailable` tells).
pub fn gpu_memory(device: &Device) -> Option<(u64, u64)> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => d
            .cuda_stream()
            .context()
            .mem_get_info()
            .ok()
            .map(|(free, total)| (free as u64, total as u64)),
        _ => None,
    }
}

/// `bytes` as `12.3 GiB`.
pub fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Whether `err` is the GPU running out of memory (CUDA's `CUDA_ERROR_OUT_OF_MEMORY`, which candle passes on
/// as text).
pub fn is_gpu_out_of_memory(err: &dyn std::fmt::Display) -> bool {
    let s = err.to_string();
    s.contains("CUDA_ERROR_OUT_OF_MEMORY") || s.contains("CUBLAS_STATUS_ALLOC_FAILED")
}

/// How many GPUs the driver sees; an error that says what is wrong where the driver does not start.
fn gpu_count() -> Result<usize> {
    #[cfg(feature = "cuda")]
    {
        use candle_core::cuda_backend::cudarc::driver::CudaContext;
        CudaContext::device_count()
            .map(|n| n.max(0) as usize)
            .map_err(|e| driver_error(&e))
    }
    #[cfg(not(feature = "cuda"))]
    Err(Error::invalid(NOT_BUILT.to_string()))
}

#[cfg(feature = "cuda")]
fn open_cuda(n: usize) -> Result<Device> {
    Device::new_cuda(n).map_err(|e| driver_error(&e))
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(_: usize) -> Result<Device> {
    Err(Error::invalid(NOT_BUILT.to_string()))
}

/// The CUDA driver's error with what it means for the user.
#[cfg(feature = "cuda")]
fn driver_error(e: &dyn std::fmt::Display) -> Error {
    let s = e.to_string();
    let why = if s.contains("NO_DEVICE") {
        "the NVIDIA driver sees no GPU (is one installed, and does `nvidia-smi` list it?)"
    } else if s.contains("INSUFFICIENT_DRIVER") || s.contains("COMPAT_NOT_SUPPORTED") {
        "the NVIDIA driver is older than the CUDA this sorrel was built with: update the driver"
    } else if s.contains("NOT_INITIALIZED") || s.contains("SYSTEM_DRIVER_MISMATCH") {
        "the NVIDIA driver did not start (does `nvidia-smi` work?)"
    } else {
        "the GPU could not be opened"
    };
    Error::invalid(format!(
        "CUDA: {why}; use --device cpu to run on the CPU ({s})"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_as_people_write_them() {
        assert_eq!("cpu".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        assert_eq!(
            "CUDA".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(0)
        );
        assert_eq!(
            "cuda:3".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(3)
        );
        assert_eq!("auto".parse::<DeviceChoice>().unwrap(), DeviceChoice::Auto);
        for bad in ["cuda:", "cuda:-1", "cuda:x", "tpu", ""] {
            let e = bad.parse::<DeviceChoice>().unwrap_err().to_string();
            assert!(e.contains("cpu, cuda, cuda:N"), "{bad}: {e}");
        }
        assert_eq!(DeviceChoice::Cuda(2).to_string(), "cuda:2");
    }

    #[test]
    fn cpu_and_auto_open_without_a_gpu() {
        assert!(DeviceChoice::Cpu.open().unwrap().is_cpu());
        // Without the feature (or without a GPU) auto is the CPU; with one it may be a GPU.
        if !cuda_built() {
            assert!(DeviceChoice::Auto.open().unwrap().is_cpu());
        }
    }

    #[test]
    fn a_cpu_build_says_how_to_get_cuda() {
        if cuda_built() {
            return;
        }
        let e = DeviceChoice::Cuda(0).open().unwrap_err().to_string();
        assert!(
            e.contains("--features cuda") && e.contains("--device cpu"),
            "{e}"
        );
    }

    #[test]
    fn out_of_memory_is_recognised() {
        assert!(is_gpu_out_of_memory(
            &"DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")"
        ));
        assert!(!is_gpu_out_of_memory(&"shape mismatch"));
    }
}
