//! `CLIPImageProcessor`: shorter side resized (bicubic), centre crop, scaled to [0, 1], normalised.

use candle_core::{Device, Tensor};
use image::imageops::FilterType;
use sorrel_core::{Error, Result};

use super::config::ClipImageProcessorConfig;

/// A picture as `CLIPImageProcessor` prepares it: (1, 3, crop_h, crop_w) f32.
///
/// `rgb` is `width * height` RGB8 pixels, rows top to bottom. Pictures whose shorter side already has the
/// target length are not resampled (transformers' PIL path copies them), so those match transformers
/// exactly; others go through the `image` crate's Catmull-Rom filter (bicubic, a = -0.5, as PIL's), which
/// computes in f32 where PIL uses fixed point, so single pixels can differ by one level.
pub fn preprocess(
    cfg: &ClipImageProcessorConfig,
    rgb: &[u8],
    width: usize,
    height: usize,
    device: &Device,
) -> Result<Tensor> {
    if rgb.len() != width * height * 3 || width == 0 || height == 0 {
        return Err(Error::invalid(format!(
            "a {width}x{height} RGB picture needs {} bytes, got {}",
            width * height * 3,
            rgb.len()
        )));
    }
    let mut img = image::RgbImage::from_raw(width as u32, height as u32, rgb.to_vec())
        .expect("length checked above");
    if let Some(short) = cfg.shortest_edge() {
        // transformers' get_resize_output_image_size: the long side scales by the same factor, truncated.
        let (w, h) = if width <= height {
            (short, short * height / width)
        } else {
            (short * width / height, short)
        };
        if (w, h) != (width, height) {
            img = image::imageops::resize(&img, w as u32, h as u32, FilterType::CatmullRom);
        }
    }
    if let Some((ch, cw)) = cfg.crop() {
        let (w, h) = (img.width() as usize, img.height() as usize);
        if ch > h || cw > w {
            return Err(Error::invalid(format!(
                "the picture is {w}x{h} after resizing, smaller than the {cw}x{ch} crop the image encoder needs"
            )));
        }
        let (top, left) = ((h - ch) / 2, (w - cw) / 2);
        img = image::imageops::crop_imm(&img, left as u32, top as u32, cw as u32, ch as u32)
            .to_image();
    }
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut planes = vec![0f32; 3 * h * w];
    for (i, px) in img.pixels().enumerate() {
        for c in 0..3 {
            let mut v = px.0[c] as f32;
            if cfg.do_rescale {
                // transformers rescales in f64 and stores f32.
                v = (px.0[c] as f64 * cfg.rescale_factor) as f32;
            }
            if cfg.do_normalize {
                v = (v - cfg.image_mean[c]) / cfg.image_std[c];
            }
            planes[c * h * w + i] = v;
        }
    }
    Ok(Tensor::from_vec(planes, (1, 3, h, w), device)?)
}
