//! VACE's control input (diffusers' `WanVACEPipeline.preprocess_conditions`, `prepare_video_latents` and
//! `prepare_masks`): the video split by its mask into the part to keep and the part to regenerate, both
//! encoded; reference pictures encoded in front of them in time; the mask unshuffled 8x8 into channels.

use candle_core::{DType, Tensor};
use sorrel_core::Result;

use crate::loader::WanPipeline;
use crate::request::{Conditioning, GenerateRequest, Picture};

/// The grey diffusers' VACE example fills frames to generate with, (128, 128, 128).
pub const FILL_GRAY: u8 = 128;

/// A `width` x `height` picture of one colour.
pub fn solid(width: usize, height: usize, value: u8) -> Picture {
    Picture {
        width,
        height,
        rgb: vec![value; width * height * 3],
    }
}

/// What a request composes for a VACE model: the control video (`None`: zeros), the mask (`None`: all to
/// generate) and the reference pictures. Image-to-video and first/last-frame become a video of the given
/// frames with grey between and a mask that keeps exactly them.
fn composition(
    req: &GenerateRequest,
) -> (Option<Vec<Picture>>, Option<Vec<Picture>>, Vec<Picture>) {
    let (w, h, f) = (req.width, req.height, req.frames);
    match &req.conditioning {
        Conditioning::Image { first, last } => {
            let mut video = vec![first.clone()];
            let mut mask = vec![solid(w, h, 0)];
            let gap = f - 1 - usize::from(last.is_some());
            video.extend(std::iter::repeat_n(solid(w, h, FILL_GRAY), gap));
            mask.extend(std::iter::repeat_n(solid(w, h, 255), gap));
            if let Some(l) = last {
                video.push(l.clone());
                mask.push(solid(w, h, 0));
            }
            (Some(video), Some(mask), vec![])
        }
        Conditioning::Compose {
            video,
            mask,
            references,
        } => (video.clone(), mask.clone(), references.clone()),
        Conditioning::None | Conditioning::Video { .. } | Conditioning::Continue { .. } => {
            (None, None, vec![])
        }
    }
}

impl WanPipeline {
    /// VACE's control latents for a request, (1, 2z + s*s, R + T, h, w): R reference frames, then the video.
    pub fn vace_control(&self, req: &GenerateRequest) -> Result<Tensor> {
        let (video, mask, references) = composition(req);
        let (width, height, f) = (req.width, req.height, req.frames);
        let dev = &self.device;
        let video = match &video {
            Some(v) => {
                self.pictures_to_video(&v.iter().take(f).collect::<Vec<_>>(), (width, height))?
            }
            None => Tensor::zeros((1, 3, f, height, width), DType::F32, dev)?,
        };
        // The mask in [0, 1] as diffusers reads it: a picture in [-1, 1], then (x + 1) / 2.
        let mask = match &mask {
            Some(m) => {
                let m =
                    self.pictures_to_video(&m.iter().take(f).collect::<Vec<_>>(), (width, height))?;
                ((m.narrow(1, 0, 1)? + 1.0)? / 2.0)?.clamp(0f32, 1f32)?
            }
            None => Tensor::ones((1, 1, f, height, width), DType::F32, dev)?,
        };
        let keep = mask.gt(0.5)?.to_dtype(DType::F32)?;
        let inactive = video.broadcast_mul(&(1.0 - &keep)?)?;
        let reactive = video.broadcast_mul(&keep)?;
        let mut latents = Tensor::cat(
            &[self.encode_video(&inactive)?, self.encode_video(&reactive)?],
            1,
        )?;
        // Each reference goes in front of what is there so far, as diffusers loops: the last one given ends
        // up first in time.
        for r in &references {
            let canvas = self.reference_canvas(r, (width, height))?;
            let z = self.encode_video(&canvas)?;
            let z = Tensor::cat(&[&z, &z.zeros_like()?], 1)?;
            latents = Tensor::cat(&[&z, &latents], 2)?;
        }
        let masks = self.unshuffled_mask(&mask, references.len())?;
        Ok(Tensor::cat(&[&latents, &masks], 1)?)
    }

    /// The mask (1, 1, F, H, W) as VACE's channels: each s x s block of pixels (s the VAE's spatial factor)
    /// becomes s*s channels, time is resampled nearest-exact to the latent frames, and `refs` zero frames
    /// go in front. Returns (1, s*s, refs + T, H/s, W/s).
    fn unshuffled_mask(&self, mask: &Tensor, refs: usize) -> Result<Tensor> {
        let (_, _, f, hh, ww) = mask.dims5()?;
        let (s, tc) = self.info.compression;
        let (h, w) = (hh / s, ww / s);
        let t = f.div_ceil(tc);
        let m = mask
            .reshape((f, h, s, w, s))?
            .permute([2, 4, 0, 1, 3])?
            .reshape((s * s, f, h, w))?;
        // PyTorch's nearest-exact: source = floor((i + 0.5) * in / out), in f32.
        let scale = f as f32 / t as f32;
        let idx: Vec<u32> = (0..t)
            .map(|i| (((i as f32 + 0.5) * scale).floor() as usize).min(f - 1) as u32)
            .collect();
        let idx = Tensor::new(idx, mask.device())?;
        let m = m.index_select(&idx, 1)?.unsqueeze(0)?;
        Ok(if refs > 0 {
            m.pad_with_zeros(2, refs, 0)?
        } else {
            m
        })
    }

    /// A reference picture as diffusers places it: in [-1, 1], scaled to fit inside the frame keeping its
    /// proportions (bilinear, as `torch.nn.functional.interpolate` without antialiasing), centred on a white
    /// canvas. Returns (1, 3, 1, H, W).
    fn reference_canvas(&self, p: &Picture, (width, height): (usize, usize)) -> Result<Tensor> {
        let (ih, iw) = (p.height, p.width);
        let px =
            |c: usize, y: usize, x: usize| p.rgb[(y * iw + x) * 3 + c] as f32 / 255.0 * 2.0 - 1.0;
        let scale = (height as f64 / ih as f64).min(width as f64 / iw as f64);
        let (nh, nw) = ((ih as f64 * scale) as usize, (iw as f64 * scale) as usize);
        let (top, left) = ((height - nh) / 2, (width - nw) / 2);
        // PyTorch's source index for align_corners=False: max((dst + 0.5) * in/out - 0.5, 0), in f32.
        let taps = |inp: usize, out: usize| -> Vec<(usize, usize, f32)> {
            let sc = inp as f32 / out as f32;
            (0..out)
                .map(|o| {
                    let src = ((o as f32 + 0.5) * sc - 0.5).max(0.0);
                    let i0 = src as usize;
                    let i1 = if i0 < inp - 1 { i0 + 1 } else { i0 };
                    (i0, i1, src - i0 as f32)
                })
                .collect()
        };
        let (ty, tx) = (taps(ih, nh), taps(iw, nw));
        let mut canvas = vec![1f32; 3 * height * width];
        for c in 0..3 {
            for (oy, &(y0, y1, ly)) in ty.iter().enumerate() {
                for (ox, &(x0, x1, lx)) in tx.iter().enumerate() {
                    let v = (1.0 - ly) * ((1.0 - lx) * px(c, y0, x0) + lx * px(c, y0, x1))
                        + ly * ((1.0 - lx) * px(c, y1, x0) + lx * px(c, y1, x1));
                    canvas[(c * height + top + oy) * width + left + ox] = v;
                }
            }
        }
        Ok(Tensor::from_vec(
            canvas,
            (1, 3, 1, height, width),
            &self.device,
        )?)
    }
}
