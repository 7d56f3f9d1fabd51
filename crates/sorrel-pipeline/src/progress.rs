//! The one progress type that the CLI (a progress bar) and, later, the server (job progress) both consume.

/// Something worth telling the user about during a generation.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A stage begins: "text encoder", "denoising", "vae decode".
    Stage(&'static str),
    /// A denoising step finished: `index` counts from 1 to `total`.
    Step {
        /// Steps done so far.
        index: usize,
        /// Steps in all.
        total: usize,
        /// The timestep the model saw.
        timestep: f32,
    },
    /// A window of a video made window by window (diffusion forcing) begins: `index` counts from 1 to
    /// `total`. Its frames reach the caller's sink when it finishes.
    Window {
        /// This window, from 1.
        index: usize,
        /// Windows in all.
        total: usize,
    },
}

/// Receives events; returning `false` cancels the generation at the next step boundary.
pub type ProgressFn<'a> = dyn FnMut(&Event) -> bool + 'a;
