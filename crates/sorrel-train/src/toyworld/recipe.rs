//! The embedded model's recipe: the configs of its four parts and the training settings, chosen from
//! measurements on the 2-core CPU this project is built on (see `docs/models/toyworld.md`).
//!
//! The VAE compresses space 4x and leaves time alone: with its earlier temporal taps kept at zero it is a
//! per-frame image autoencoder, so it trains on single frames (about 10x cheaper per clip than a temporal
//! VAE in candle) and still loads and runs as an ordinary Wan VAE. The transformer patches (2, 2, 2), so
//! 8 frames of 8x8 latents are 64 tokens.

use serde_json::{json, Value};

/// Every size and setting of one training run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Recipe {
    /// Frame width and height in pixels.
    pub size: usize,
    /// Frames per clip.
    pub frames: usize,
    /// Playback rate the clips are meant for.
    pub fps: u32,
    /// Text tokens per prompt (the longest caption is 15 words plus `</s>`).
    pub text_len: usize,
    /// VAE base width (diffusers' `base_dim`).
    pub vae_dim: usize,
    /// Latent channels.
    pub z_dim: usize,
    /// Transformer attention heads.
    pub heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Transformer blocks.
    pub layers: usize,
    /// Transformer feed-forward width.
    pub ffn_dim: usize,
    /// Text encoder width (and the transformer's `text_dim`).
    pub text_dim: usize,
    /// Text encoder layers.
    pub text_layers: usize,
    /// Seed of initial weights, data order and noise.
    pub seed: u64,
    /// VAE optimiser steps.
    pub vae_steps: u64,
    /// Frames per VAE step.
    pub vae_batch: usize,
    /// VAE learning rate.
    pub vae_lr: f64,
    /// Distinct training clips encoded once for the transformer stage.
    pub latent_clips: usize,
    /// Transformer optimiser steps.
    pub dit_steps: u64,
    /// Clips per transformer step.
    pub dit_batch: usize,
    /// Transformer and text encoder learning rate (held until the decay tail).
    pub dit_lr: f64,
    /// Final transformer steps over which the learning rate falls linearly to zero (0: constant). A step
    /// count like `dit_steps`, so a resumed run may change it; runs recorded before it existed read 0.
    #[serde(default)]
    pub dit_lr_decay_steps: u64,
    /// EMA decay of the shipped transformer and text encoder weights.
    pub ema_decay: f64,
    /// Optimiser steps of the decoder stage (the decoder trained alone on the frozen encoder's latents;
    /// 0 skips it). A step count, so a resumed run may change it; runs recorded before it existed read 0.
    #[serde(default)]
    pub decoder_steps: u64,
    /// Starting learning rate of the decoder stage, which falls linearly to zero over its steps.
    #[serde(default)]
    pub decoder_lr: f64,
    /// Share of captions replaced by "" (so classifier-free guidance has an unconditional model).
    pub caption_dropout: f64,
    /// Frames encoded per training scene, from which the transformer's clips are cut (0: `frames`, the
    /// first clip only, as runs recorded before it existed did).
    #[serde(default)]
    pub span_frames: usize,
    /// Latest frame an encoded span may start at: odd-numbered training scenes start at a frame drawn up
    /// to this, so the ongoing world (turns at walls, bounces coming to rest) is seen; even-numbered ones
    /// start at 0.
    #[serde(default)]
    pub span_start_max: usize,
    /// Share of transformer clips trained with clean frames given (a first frame, earlier frames, the
    /// first and last frames), each given frame at t = 0 through per-token timesteps: the one set of
    /// weights then does image-to-video, extension, connecting and rollouts. 0: text-to-video only.
    #[serde(default)]
    pub context_share: f64,
    /// Relative weights, among clips with given frames, of the four ways frames are given: the first frame
    /// (image to video), the first slices (extension forward and every rollout window after the first), the
    /// last slices (extension backward), the first and last slice (joining). Runs recorded before it
    /// existed drew the four equally.
    #[serde(default = "equal_kinds")]
    pub context_kinds: [f64; 4],
    /// Share of captions written as paraphrases ([`sorrel_toyworld::paraphrase`]) instead of the grammar.
    #[serde(default)]
    pub paraphrase_share: f64,
    /// Share of paraphrased captions that name no floor ("a red ball moves to the right"). Runs recorded
    /// before it existed named the floor in every caption (0).
    #[serde(default)]
    pub floorless_share: f64,
    /// Share of transformer clips whose slices to generate are noised independently, each at its own
    /// level (diffusion forcing proper), instead of all at the clip's one level. Runs recorded before it
    /// existed noised them together (0).
    #[serde(default)]
    pub slice_noise_share: f64,
    /// Shift applied to the transformer's training noise levels, as the sampler's schedule shifts its own
    /// ([`crate::toyworld::data::shift_level`]), so the high levels where sampling decides the layout are
    /// trained as often as they are sampled. Runs recorded before it existed used none (1).
    #[serde(default = "no_shift")]
    pub noise_shift: f64,
    /// Sampling defaults written into the model folder.
    pub sample_steps: usize,
    /// Classifier-free guidance scale at sampling.
    pub guidance: f64,
    /// Flow shift of the sampling schedule.
    pub flow_shift: f64,
}

/// Training noise levels as drawn, unshifted.
fn no_shift() -> f64 {
    1.0
}

/// The four ways of giving frames drawn equally, as the sixth version trained.
fn equal_kinds() -> [f64; 4] {
    [1.0; 4]
}

impl Default for Recipe {
    /// The shipped model's recipe.
    fn default() -> Self {
        Self {
            size: 32,
            frames: 8,
            fps: 8,
            text_len: 16,
            vae_dim: 16,
            z_dim: 8,
            heads: 4,
            head_dim: 32,
            layers: 6,
            ffn_dim: 512,
            text_dim: 128,
            text_layers: 2,
            seed: 7,
            vae_steps: 1000,
            vae_batch: 16,
            vae_lr: 1e-3,
            latent_clips: 8192,
            dit_steps: 12000,
            dit_batch: 32,
            dit_lr: 5e-4,
            dit_lr_decay_steps: 3000,
            ema_decay: 0.998,
            decoder_steps: 2000,
            decoder_lr: 5e-4,
            caption_dropout: 0.1,
            span_frames: 16,
            span_start_max: 56,
            context_share: 0.5,
            context_kinds: equal_kinds(),
            paraphrase_share: 0.5,
            // People leave the floor out; with no such caption in training the sixth and seventh versions
            // drew an empty frame for most seeds of "a red ball moves to the right".
            floorless_share: 0.2,
            slice_noise_share: 0.0,
            noise_shift: 1.0,
            sample_steps: 25,
            // Measured, not assumed: at 4 objects popped in and out between frames and bounces lost their
            // arc (permanence 79 %, bounce 67 % against 89 % and 100 %; docs/models/toyworld.md).
            guidance: 1.5,
            flow_shift: 3.0,
        }
    }
}

impl Recipe {
    /// A recipe small enough to run end to end in a test (seconds): same code, tiny widths and step counts.
    pub fn smoke() -> Self {
        Self {
            frames: 4,
            vae_dim: 4,
            z_dim: 4,
            heads: 2,
            head_dim: 8,
            layers: 1,
            ffn_dim: 32,
            text_dim: 16,
            text_layers: 1,
            vae_steps: 6,
            vae_batch: 4,
            latent_clips: 16,
            dit_steps: 6,
            dit_lr_decay_steps: 2,
            dit_batch: 4,
            decoder_steps: 4,
            span_frames: 8,
            span_start_max: 4,
            sample_steps: 2,
            ..Self::default()
        }
    }

    /// The transformer learning rate for optimiser step `step` (0-based): `dit_lr`, then a linear fall over
    /// the last `dit_lr_decay_steps` steps that reaches zero just after the final step.
    pub fn dit_lr_at(&self, step: u64) -> f64 {
        let decay = self.dit_lr_decay_steps.min(self.dit_steps);
        let left = self.dit_steps.saturating_sub(step);
        if decay == 0 || left > decay {
            self.dit_lr
        } else {
            self.dit_lr * left as f64 / decay as f64
        }
    }

    /// The decoder stage's learning rate for optimiser step `step` (0-based): from `decoder_lr` linearly
    /// to zero just after the final step. The stage fine-tunes a decoder that already works, so it
    /// starts at half the VAE stage's rate and anneals.
    pub fn decoder_lr_at(&self, step: u64) -> f64 {
        let left = self.decoder_steps.saturating_sub(step);
        self.decoder_lr * left as f64 / self.decoder_steps.max(1) as f64
    }

    /// This recipe with its step counts and sampling settings zeroed: what two runs must share to be the
    /// same training (a run may be resumed with more steps, or exported with other sampling defaults).
    pub fn without_step_counts(&self) -> Self {
        Self {
            vae_steps: 0,
            dit_steps: 0,
            dit_lr_decay_steps: 0,
            decoder_steps: 0,
            sample_steps: 0,
            guidance: 0.0,
            flow_shift: 0.0,
            ..self.clone()
        }
    }

    /// Checks the sizes fit the architecture; says what to change.
    pub fn validate(&self) -> Result<(), String> {
        if self.size == 0 || !self.size.is_multiple_of(8) {
            return Err(format!(
                "size {} must be a positive multiple of 8",
                self.size
            ));
        }
        if self.frames < 2 || !self.frames.is_multiple_of(2) {
            return Err(format!(
                "frames {} must be even and at least 2 (the transformer patches 2 frames)",
                self.frames
            ));
        }
        if self.vae_batch == 0 || self.dit_batch == 0 || self.latent_clips == 0 {
            return Err("batch sizes and latent_clips must be positive".into());
        }
        if self.decoder_steps > 0 && !(self.decoder_lr > 0.0 && self.decoder_lr.is_finite()) {
            return Err(format!(
                "decoder_lr {} must be positive when decoder_steps is {}",
                self.decoder_lr, self.decoder_steps
            ));
        }
        if self.span_frames != 0 && self.span_frames < self.frames {
            return Err(format!(
                "span_frames {} must be at least frames {} (or 0)",
                self.span_frames, self.frames
            ));
        }
        if !(0.0..=1.0).contains(&self.context_share)
            || !(0.0..=1.0).contains(&self.paraphrase_share)
            || !(0.0..=1.0).contains(&self.floorless_share)
            || !(0.0..=1.0).contains(&self.slice_noise_share)
        {
            return Err(
                "context_share, paraphrase_share, floorless_share and slice_noise_share must be \
                 in [0, 1]"
                    .into(),
            );
        }
        if !(self.noise_shift > 0.0 && self.noise_shift.is_finite()) {
            return Err(format!(
                "noise_shift {} must be positive (1: levels as drawn)",
                self.noise_shift
            ));
        }
        if self
            .context_kinds
            .iter()
            .any(|w| !(w.is_finite() && *w >= 0.0))
            || self.context_kinds.iter().sum::<f64>() <= 0.0
        {
            return Err(format!(
                "context_kinds {:?} must be four weights of at least 0, not all 0",
                self.context_kinds
            ));
        }
        if self.text_len < 2 {
            return Err("text_len must be at least 2".into());
        }
        Ok(())
    }

    /// Frames encoded per training scene.
    pub fn span(&self) -> usize {
        if self.span_frames == 0 {
            self.frames
        } else {
            self.span_frames
        }
    }

    /// diffusers `AutoencoderKLWan` config, with the latents' per-channel mean and std.
    pub fn vae_config(&self, mean: &[f64], std: &[f64]) -> Value {
        json!({
            "_class_name": "AutoencoderKLWan",
            "base_dim": self.vae_dim,
            "z_dim": self.z_dim,
            "dim_mult": [1, 2, 4],
            "num_res_blocks": 1,
            "attn_scales": [],
            "temperal_downsample": [false, false],
            "dropout": 0.0,
            "latents_mean": mean,
            "latents_std": std,
            "in_channels": 3,
            "out_channels": 3,
            "is_residual": false,
            "scale_factor_spatial": 4,
            "scale_factor_temporal": 1,
        })
    }

    /// transformers `UMT5EncoderModel` config.
    pub fn text_encoder_config(&self, vocab_size: usize) -> Value {
        json!({
            "architectures": ["UMT5EncoderModel"],
            "model_type": "umt5",
            "vocab_size": vocab_size,
            "d_model": self.text_dim,
            "d_kv": self.text_dim / 4,
            "num_heads": 4,
            "d_ff": 2 * self.text_dim,
            "num_layers": self.text_layers,
            "num_decoder_layers": 0,
            "relative_attention_num_buckets": 16,
            "relative_attention_max_distance": 32,
            "feed_forward_proj": "gated-gelu",
            "dense_act_fn": "gelu_new",
            "layer_norm_epsilon": 1e-6,
            "is_gated_act": true,
            "pad_token_id": 0,
            "eos_token_id": 1,
            "tie_word_embeddings": false,
        })
    }

    /// diffusers `WanTransformer3DModel` config.
    pub fn transformer_config(&self) -> Value {
        json!({
            "_class_name": "WanTransformer3DModel",
            "patch_size": [2, 2, 2],
            "num_attention_heads": self.heads,
            "attention_head_dim": self.head_dim,
            "in_channels": self.z_dim,
            "out_channels": self.z_dim,
            "text_dim": self.text_dim,
            "freq_dim": 256,
            "ffn_dim": self.ffn_dim,
            "num_layers": self.layers,
            "cross_attn_norm": true,
            "qk_norm": "rms_norm_across_heads",
            "eps": 1e-6,
            "image_dim": null,
            "added_kv_proj_dim": null,
            "rope_max_seq_len": 64,
        })
    }

    /// diffusers `FlowMatchEulerDiscreteScheduler` config: the Euler sampler the model was trained for.
    pub fn scheduler_config(&self) -> Value {
        json!({
            "_class_name": "FlowMatchEulerDiscreteScheduler",
            "num_train_timesteps": 1000,
            "shift": self.flow_shift,
            "use_dynamic_shifting": false,
        })
    }

    /// diffusers `model_index.json` of the folder.
    pub fn model_index(&self) -> Value {
        json!({
            "_class_name": "WanPipeline",
            "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
            "text_encoder": ["transformers", "UMT5EncoderModel"],
            "tokenizer": ["transformers", "T5Tokenizer"],
            "transformer": ["diffusers", "WanTransformer3DModel"],
            "transformer_2": [null, null],
            "vae": ["diffusers", "AutoencoderKLWan"],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Recipe;

    #[test]
    fn learning_rate_holds_then_falls_to_zero_over_the_tail() {
        let r = Recipe {
            dit_steps: 10,
            dit_lr: 1.0,
            dit_lr_decay_steps: 4,
            ..Recipe::default()
        };
        let lrs: Vec<f64> = (0..10).map(|s| r.dit_lr_at(s)).collect();
        assert_eq!(lrs, [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.75, 0.5, 0.25]);
        let constant = Recipe {
            dit_lr_decay_steps: 0,
            ..r.clone()
        };
        assert!((0..10).all(|s| constant.dit_lr_at(s) == 1.0));
        // A tail longer than the run decays from the first step.
        let long = Recipe {
            dit_lr_decay_steps: 40,
            ..r
        };
        assert_eq!(long.dit_lr_at(0), 1.0);
        assert_eq!(long.dit_lr_at(5), 0.5);
    }

    #[test]
    fn decoder_learning_rate_falls_from_the_first_step_to_zero() {
        let r = Recipe {
            decoder_steps: 4,
            decoder_lr: 1.0,
            ..Recipe::default()
        };
        let lrs: Vec<f64> = (0..4).map(|s| r.decoder_lr_at(s)).collect();
        assert_eq!(lrs, [1.0, 0.75, 0.5, 0.25]);
        let bad = Recipe {
            decoder_lr: 0.0,
            ..r
        };
        assert!(bad.validate().unwrap_err().contains("decoder_lr"));
    }

    #[test]
    fn recipes_recorded_before_the_kinds_draw_them_equally_and_bad_kinds_are_refused() {
        // A recipe as written before `context_kinds`, `floorless_share`, `slice_noise_share` and
        // `noise_shift` existed (the sixth version's).
        let mut old = serde_json::to_value(Recipe::default()).unwrap();
        for field in [
            "context_kinds",
            "floorless_share",
            "slice_noise_share",
            "noise_shift",
        ] {
            old.as_object_mut().unwrap().remove(field);
        }
        let r: Recipe = serde_json::from_value(old).unwrap();
        assert_eq!(r.context_kinds, [1.0; 4]);
        assert_eq!(r.floorless_share, 0.0);
        assert_eq!(r.slice_noise_share, 0.0);
        assert_eq!(r.noise_shift, 1.0);
        for shift in [0.0, -3.0, f64::INFINITY] {
            let bad = Recipe {
                noise_shift: shift,
                ..r.clone()
            };
            assert!(bad.validate().unwrap_err().contains("noise_shift"));
        }
        let bad = Recipe {
            floorless_share: 1.5,
            ..r.clone()
        };
        assert!(bad.validate().unwrap_err().contains("floorless_share"));
        let bad = Recipe {
            slice_noise_share: -0.1,
            ..r.clone()
        };
        assert!(bad.validate().unwrap_err().contains("slice_noise_share"));
        for kinds in [[0.0; 4], [1.0, -1.0, 1.0, 1.0], [1.0, f64::NAN, 1.0, 1.0]] {
            let bad = Recipe {
                context_kinds: kinds,
                ..r.clone()
            };
            assert!(bad.validate().unwrap_err().contains("context_kinds"));
        }
    }
}
