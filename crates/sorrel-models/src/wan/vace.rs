//! VACE's control branch (`WanVACETransformer3DModel`): the control latents are patch-embedded, run through
//! one Wan block per VACE layer (the first adding the latents' own patch embedding), and each block's
//! projected output is a hint added, scaled, after the main block of the same rank in `vace_layers`.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use sorrel_core::ops::{dense, Dense};

use super::config::WanTransformerConfig;
use super::transformer::{patchify, Block, Context, Control};

struct VaceBlock {
    /// Only the first block: control = proj_in(control) + latents' patch embedding.
    proj_in: Option<Dense>,
    block: Block,
    proj_out: Dense,
}

/// The control branch of a VACE transformer.
pub(crate) struct VaceBranch {
    /// (D, vace_in_channels*pt*ph*pw)
    patch_weight: Tensor,
    patch_bias: Tensor,
    blocks: Vec<VaceBlock>,
    /// Main blocks after which the hints are added, in order.
    layers: Vec<usize>,
    in_channels: usize,
    patch: [usize; 3],
}

impl VaceBranch {
    pub(crate) fn new(
        cfg: &WanTransformerConfig,
        layers: &[usize],
        vb: &VarBuilder,
    ) -> Result<Self> {
        let d = cfg.inner_dim();
        let [pt, ph, pw] = cfg.patch_size;
        // diffusers' default for WanVACETransformer3DModel.
        let c = cfg.vace_in_channels.unwrap_or(96);
        let blocks = (0..layers.len())
            .map(|i| {
                let b = vb.pp(format!("vace_blocks.{i}"));
                Ok(VaceBlock {
                    proj_in: if i == 0 {
                        Some(dense(d, d, b.pp("proj_in"))?)
                    } else {
                        None
                    },
                    block: Block::new(cfg, b.clone())?,
                    proj_out: dense(d, d, b.pp("proj_out"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            patch_weight: vb
                .get((d, c, pt, ph, pw), "vace_patch_embedding.weight")?
                .reshape((d, c * pt * ph * pw))?,
            patch_bias: vb.get(d, "vace_patch_embedding.bias")?,
            blocks,
            layers: layers.to_vec(),
            in_channels: c,
            patch: cfg.patch_size,
        })
    }

    /// The scaled hints, one per VACE layer: hs0 is the latents' patch embedding (B, N, D); the control
    /// latents may cover fewer tokens than the latents (they are padded with zeros, as diffusers does).
    pub(crate) fn hints(
        &self,
        hs0: &Tensor,
        control: &Control,
        context: &Context,
        temb6: &Tensor,
        rope: &(Tensor, Tensor),
    ) -> Result<Vec<Tensor>> {
        let c = control.latents.dim(1)?;
        if c != self.in_channels {
            candle_core::bail!(
                "VACE control latents have {c} channels, the model takes {}",
                self.in_channels
            );
        }
        if control.scales.len() != self.layers.len() {
            candle_core::bail!(
                "{} control scales given for {} VACE layers",
                control.scales.len(),
                self.layers.len()
            );
        }
        let dt = hs0.dtype();
        let mut x = patchify(
            control.latents.to_dtype(dt)?,
            self.patch,
            &self.patch_weight,
            &self.patch_bias,
        )?;
        let (n, m) = (hs0.dim(1)?, x.dim(1)?);
        if m > n {
            candle_core::bail!("VACE control latents cover {m} tokens, more than the latents' {n}");
        }
        if m < n {
            x = x.pad_with_zeros(1, 0, n - m)?;
        }
        let mut hints = Vec::with_capacity(self.blocks.len());
        for (b, &scale) in self.blocks.iter().zip(&control.scales) {
            if let Some(p) = &b.proj_in {
                x = (p.forward(&x)? + hs0)?;
            }
            x = b.block.forward(&x, context, temb6, rope, None)?;
            hints.push((b.proj_out.forward(&x)? * scale)?);
        }
        Ok(hints)
    }

    /// The hint to add after main block `i`, if it is a VACE layer.
    pub(crate) fn hint_after<'a>(&self, i: usize, hints: &'a [Tensor]) -> Option<&'a Tensor> {
        self.layers.iter().position(|&l| l == i).map(|k| &hints[k])
    }

    /// The number of VACE layers (the length of [`Control::scales`]).
    pub(crate) fn layer_count(&self) -> usize {
        self.layers.len()
    }
}
