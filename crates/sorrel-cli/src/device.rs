//! `--device`, shared by every command that runs a model.

use anyhow::Result;
use sorrel_core::device::DeviceChoice;

/// `--device cpu|cuda|cuda:N|auto`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct DeviceArgs {
    /// Where the models run: cpu (default), cuda (the first GPU), cuda:N, or auto (a GPU when this build has
    /// CUDA and the machine has one, else the CPU). CUDA needs a build with `--features cuda`
    /// (docs/cuda.md). Also read from SORREL_DEVICE.
    #[arg(
        long,
        env = "SORREL_DEVICE",
        default_value = "cpu",
        value_name = "DEVICE"
    )]
    pub device: DeviceChoice,
}

impl DeviceArgs {
    /// Opens the device, saying which one on stderr unless `quiet` (a GPU, or `auto` that fell back).
    pub fn open(&self, quiet: bool) -> Result<candle_core::Device> {
        let dev = self.device.open()?;
        if !quiet && (self.device != DeviceChoice::Cpu) {
            eprintln!("device: {}", sorrel_core::device::describe(&dev));
        }
        Ok(dev)
    }
}
