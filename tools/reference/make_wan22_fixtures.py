"""Reference fixtures for Wan2.2: its VAE (residual blocks, 2x2 patchify, 16x spatial), TI2V (per-token timesteps,
text-to-video and image-to-video) and A14B (two experts switched at `boundary_ratio`), run with diffusers' own
pipelines on tiny random weights.

usage:
  python tools/reference/make_wan22_fixtures.py tests/fixtures     # after make_fixtures.py (it reuses wan-tiny-alt)

Pinned as make_fixtures.py (diffusers 0.42.1, transformers 5.24.0, torch 2.15.0); ftfy is stubbed as the identity
(the I2V pipeline calls it without importing it when missing; our prompts are ASCII).

  wan22-tiny-ti2v/   a WanPipeline folder as Wan-AI ship Wan2.2-TI2V-5B (expand_timesteps, no image encoder) with a
                     tiny Wan2.2 VAE (base_dim 8, decoder_base_dim 6, z_dim 8, patch 2) on wan-tiny-alt's text
                     encoder; 96x64 (non-square, a multiple of 32), 13 frames, 4 steps, guidance 5. reference:
                     vae.* (encode of a moving clip, decode of its mean), t2v.* and i2v.* (WanImageToVideoPipeline
                     on the same folder, first latent frame held at t = 0)
  wan22-tiny-a14b/   a WanPipeline folder with transformer and transformer_2 (two differently seeded copies of
                     wan-tiny-alt's transformer) and boundary_ratio 0.875 on wan-tiny-alt's VAE; 48x32, 13 frames,
                     6 steps, guidance 4 then 3 (guidance_scale_2): the switch falls between steps 2 and 3
  wan22-tiny-a14b-i2v/  WanImageToVideoPipeline with two 36-channel experts, no CLIP (as Wan2.2-I2V-A14B),
                     boundary_ratio 0.9, 48x32, 13 frames, 4 steps
"""
import os
import shutil

import numpy as np
import torch
from PIL import Image

import diffusers.pipelines.wan.pipeline_wan as t2v_module
import diffusers.pipelines.wan.pipeline_wan_i2v as i2v_module
from diffusers import (AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline, WanPipeline,
                       WanTransformer3DModel)
from fixture_util import load_alt, moving_video, perturb, picture, run_jobs, save, stub_ftfy

stub_ftfy(t2v_module, i2v_module)

PROMPT, NEGATIVE = "a cat and a dog baking a cake", "blurred static"


def transformer(cfg, seed, **changes):
    cfg = dict(cfg, **changes)
    torch.manual_seed(seed)
    tr = WanTransformer3DModel(**cfg).eval()
    perturb(tr, seed=seed + 100)
    return tr


def scheduler(shift):
    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000,
                                   flow_shift=shift)


def recorder(models, refs):
    """Every transformer call's output in order, with which model made it, and the latents after each step."""
    calls = []
    hooks = [m.register_forward_hook(lambda mod, a, kw, o, k=k: calls.append((k, o[0].detach().clone())),
                                     with_kwargs=True) for k, m in enumerate(models)]

    def on_step(p, i, t, kw):
        refs[f"step{i}.latents_after"] = kw["latents"].detach().clone()
        refs[f"step{i}.timestep"] = t.detach().reshape(1).float().clone()
        return {}
    return calls, hooks, on_step


def record_calls(refs, calls, prefix, steps):
    assert len(calls) == 2 * steps, len(calls)
    for i in range(steps):
        (k, c), (_, u) = calls[2 * i], calls[2 * i + 1]
        refs[f"{prefix}step{i}.noise_pred_cond"], refs[f"{prefix}step{i}.noise_pred_uncond"] = c, u
        refs[f"{prefix}step{i}.expert"] = torch.tensor([float(k)])


def tiny_wan22_vae():
    torch.manual_seed(30)  # the VAE's own init draws from the global generator
    g = torch.Generator().manual_seed(31)
    z = 8
    vae = AutoencoderKLWan(base_dim=8, decoder_base_dim=6, z_dim=z, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                           temperal_downsample=[False, True, True], is_residual=True, in_channels=12,
                           out_channels=12, patch_size=2, scale_factor_spatial=16, scale_factor_temporal=4,
                           latents_mean=(torch.randn(z, generator=g) * 0.3).tolist(),
                           latents_std=(1.0 + torch.rand(z, generator=g)).tolist()).eval()
    perturb(vae, seed=9)
    return vae


def ti2v(root):
    H, W, F, steps, msl = 64, 96, 13, 4, 24
    tok, te, _, cfg = load_alt(root)
    vae = tiny_wan22_vae()
    z = vae.config.z_dim
    tr = transformer(cfg, 41, in_channels=z, out_channels=z)
    refs = {}

    # The VAE alone: encode a moving clip, decode the posterior mean (de-normalisation is the pipeline's).
    video = moving_video(5, F, H, W)
    refs["vae.video"] = torch.from_numpy(video)
    with torch.no_grad():
        x = torch.from_numpy(video).float().div(255).mul(2).sub(1).permute(3, 0, 1, 2).unsqueeze(0)
        dist = vae.encode(x).latent_dist
        refs["vae.mean"], refs["vae.logvar"] = dist.mean, dist.logvar
        refs["vae.decoded"] = vae.decode(dist.mean).sample

    pipe = WanPipeline(tokenizer=tok, text_encoder=te, vae=vae, scheduler=scheduler(5.0), transformer=tr,
                       expand_timesteps=True)
    pipe.set_progress_bar_config(disable=True)
    lat = (1, z, (F - 1) // 4 + 1, H // 16, W // 16)

    noise = torch.randn(lat, generator=torch.Generator().manual_seed(13))
    refs["t2v.latents_init"] = noise.clone()
    t2v_refs = {}
    calls, hooks, on_step = recorder([tr], t2v_refs)
    res = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, height=H, width=W, num_frames=F, num_inference_steps=steps,
               guidance_scale=5.0, max_sequence_length=msl, latents=noise.clone(), output_type="np",
               callback_on_step_end=on_step, callback_on_step_end_tensor_inputs=["latents"])
    for h in hooks:
        h.remove()
    record_calls(t2v_refs, calls, "", steps)
    refs.update({f"t2v.{k}": v for k, v in t2v_refs.items()})
    refs["t2v.frames"] = torch.from_numpy(np.ascontiguousarray(res.frames))
    shutil.rmtree(os.path.join(root, "wan22-tiny-ti2v"), ignore_errors=True)
    pipe.save_pretrained(os.path.join(root, "wan22-tiny-ti2v", "pipeline"), safe_serialization=True)

    i2v = WanImageToVideoPipeline(tokenizer=tok, text_encoder=te, vae=vae, scheduler=scheduler(5.0),
                                  image_processor=None, image_encoder=None, transformer=tr, expand_timesteps=True)
    i2v.set_progress_bar_config(disable=True)
    image = picture(21, H, W)
    refs["i2v.image"] = torch.from_numpy(image)
    noise = torch.randn(lat, generator=torch.Generator().manual_seed(17))
    refs["i2v.latents_init"] = noise.clone()
    i2v_refs = {}
    calls, hooks, on_step = recorder([tr], i2v_refs)
    res = i2v(image=Image.fromarray(image), prompt=PROMPT, negative_prompt=NEGATIVE, height=H, width=W, num_frames=F,
              num_inference_steps=steps, guidance_scale=5.0, max_sequence_length=msl, latents=noise.clone(),
              output_type="np", callback_on_step_end=on_step, callback_on_step_end_tensor_inputs=["latents"])
    for h in hooks:
        h.remove()
    record_calls(i2v_refs, calls, "", steps)
    # The scheduler steps all frames; the model sees (and the output keeps) the first one held at the image's
    # latents. Sorrel holds it in the latents themselves, so the recorded latents are the held ones.
    with torch.no_grad():
        img_t = i2v.video_processor.preprocess(Image.fromarray(image), height=H, width=W).float()
        _, cond, ffm = i2v.prepare_latents(img_t, 1, z, H, W, F, torch.float32, "cpu", None, noise.clone())
    refs["i2v.condition"] = cond
    for i in range(steps):
        k = f"step{i}.latents_after"
        i2v_refs[k] = (1 - ffm) * cond + ffm * i2v_refs[k]
    refs.update({f"i2v.{k}": v for k, v in i2v_refs.items()})
    refs["i2v.frames"] = torch.from_numpy(np.ascontiguousarray(res.frames))
    save(os.path.join(root, "wan22-tiny-ti2v"), refs, dict(
        prompt=PROMPT, negative_prompt=NEGATIVE, height=H, width=W, num_frames=F, steps=steps, guidance_scale=5.0,
        max_sequence_length=msl, flow_shift=5.0))
    print(f"ti2v: timesteps {pipe.scheduler.timesteps.tolist()}")


def a14b(root):
    H, W, F, steps, msl = 32, 48, 13, 6, 24
    tok, te, vae, cfg = load_alt(root)
    high, low = transformer(cfg, 51), transformer(cfg, 52)
    pipe = WanPipeline(tokenizer=tok, text_encoder=te, vae=vae, scheduler=scheduler(5.0), transformer=high,
                       transformer_2=low, boundary_ratio=0.875)
    pipe.set_progress_bar_config(disable=True)
    noise = torch.randn((1, 16, (F - 1) // 4 + 1, H // 8, W // 8), generator=torch.Generator().manual_seed(23))
    refs = {"latents_init": noise.clone()}
    calls, hooks, on_step = recorder([high, low], refs)
    res = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, height=H, width=W, num_frames=F, num_inference_steps=steps,
               guidance_scale=4.0, guidance_scale_2=3.0, max_sequence_length=msl, latents=noise.clone(),
               output_type="np", callback_on_step_end=on_step, callback_on_step_end_tensor_inputs=["latents"])
    for h in hooks:
        h.remove()
    record_calls(refs, calls, "", steps)
    experts = [int(refs[f"step{i}.expert"].item()) for i in range(steps)]
    assert 0 < experts.index(1) < steps, experts  # the switch falls between steps
    refs["frames"] = torch.from_numpy(np.ascontiguousarray(res.frames))
    out = os.path.join(root, "wan22-tiny-a14b")
    shutil.rmtree(out, ignore_errors=True)
    pipe.save_pretrained(os.path.join(out, "pipeline"), safe_serialization=True)
    save(out, refs, dict(prompt=PROMPT, negative_prompt=NEGATIVE, height=H, width=W, num_frames=F, steps=steps,
                         guidance_scale=4.0, guidance_scale_2=3.0, max_sequence_length=msl, flow_shift=5.0))
    print(f"a14b: timesteps {pipe.scheduler.timesteps.tolist()}, experts {experts}")


def a14b_i2v(root):
    H, W, F, steps, msl = 32, 48, 13, 4, 24
    tok, te, vae, cfg = load_alt(root)
    high, low = transformer(cfg, 61, in_channels=36), transformer(cfg, 62, in_channels=36)
    pipe = WanImageToVideoPipeline(tokenizer=tok, text_encoder=te, vae=vae, scheduler=scheduler(5.0),
                                   image_processor=None, image_encoder=None, transformer=high, transformer_2=low,
                                   boundary_ratio=0.9)
    pipe.set_progress_bar_config(disable=True)
    image = picture(27, H, W)
    noise = torch.randn((1, 16, (F - 1) // 4 + 1, H // 8, W // 8), generator=torch.Generator().manual_seed(29))
    refs = {"image": torch.from_numpy(image), "latents_init": noise.clone()}
    calls, hooks, on_step = recorder([high, low], refs)
    res = pipe(image=Image.fromarray(image), prompt=PROMPT, negative_prompt=NEGATIVE, height=H, width=W,
               num_frames=F, num_inference_steps=steps, guidance_scale=3.5, max_sequence_length=msl,
               latents=noise.clone(), output_type="np", callback_on_step_end=on_step,
               callback_on_step_end_tensor_inputs=["latents"])
    for h in hooks:
        h.remove()
    record_calls(refs, calls, "", steps)
    experts = [int(refs[f"step{i}.expert"].item()) for i in range(steps)]
    assert 0 < experts.index(1) < steps, experts
    refs["frames"] = torch.from_numpy(np.ascontiguousarray(res.frames))
    out = os.path.join(root, "wan22-tiny-a14b-i2v")
    shutil.rmtree(out, ignore_errors=True)
    pipe.save_pretrained(os.path.join(out, "pipeline"), safe_serialization=True)
    save(out, refs, dict(prompt=PROMPT, negative_prompt=NEGATIVE, height=H, width=W, num_frames=F, steps=steps,
                         guidance_scale=3.5, max_sequence_length=msl, flow_shift=5.0))
    print(f"a14b-i2v: timesteps {pipe.scheduler.timesteps.tolist()}, experts {experts}")


if __name__ == "__main__":
    run_jobs(lambda root: {"wan22-tiny-ti2v": lambda: ti2v(root), "wan22-tiny-a14b": lambda: a14b(root),
                           "wan22-tiny-a14b-i2v": lambda: a14b_i2v(root)})
