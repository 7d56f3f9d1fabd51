"""Reference fixtures for SkyReels-V2 diffusion forcing, run with diffusers' own SkyReelsV2DiffusionForcingPipeline on
tiny random weights.

usage:
  python tools/reference/make_skyreels_fixtures.py tests/fixtures     # after make_fixtures.py (reuses wan-tiny-alt)

Pinned as make_fixtures.py (diffusers 0.42.1, transformers 5.24.0, torch 2.15.0); ftfy is stubbed as the identity.

  skyreels-tiny-df/   a SkyReelsV2DiffusionForcingPipeline folder (wan-tiny-alt's text encoder, tokenizer and VAE, a
                      SkyReelsV2Transformer3DModel with inject_sample_info) and reference.safetensors with:
    matrix.N.*        generate_timestep_matrix for a few settings (step matrix, update mask, valid intervals)
    long.*            text-to-video, 48x32, 41 frames (11 latent) in windows of 17 frames (5 latent) overlapping
                      by 9 (3 latent): four windows, addnoise_condition 20, synchronous (ar_step 0), 3 steps,
                      guidance 6, 24 fps; every noise draw (each window's noise from the generator, each
                      addnoise draw from torch's global RNG), each window's final latents, the frames
    async.*           one window of 21 frames (6 latent), ar_step 1, causal_block_size 2, 3 steps, 16 fps: the
                      asynchronous schedule with block-causal attention
    i2v.*             SkyReelsV2DiffusionForcingImageToVideoPipeline on the same folder: a picture as the first
                      latent frame, 33 frames in three windows of 17 overlapping by 9, addnoise 20, guidance 5
    v2v.*             SkyReelsV2DiffusionForcingVideoToVideoPipeline (extension): a 13-frame clip (v2v.video)
                      continued by 24 frames; its last 9 frames (3 latent) start the first of three windows of 17
                      overlapping by 9, addnoise 20, guidance 5. diffusers returns the clip, the 9 frames decoded
                      again from their latents, then the new frames; the new frames are the last 24
Diffusers 0.42.1's pipeline refuses `latents=`; its noise is recorded by wrapping `randn_tensor` and
`torch.randn_like` so Sorrel can replay the same draws.
"""
import os
import shutil

import numpy as np
import torch

import diffusers.pipelines.skyreels_v2.pipeline_skyreels_v2_diffusion_forcing as df_module
import diffusers.pipelines.skyreels_v2.pipeline_skyreels_v2_diffusion_forcing_i2v as df_i2v_module
import diffusers.pipelines.skyreels_v2.pipeline_skyreels_v2_diffusion_forcing_v2v as df_v2v_module
from diffusers import (SkyReelsV2DiffusionForcingImageToVideoPipeline, SkyReelsV2DiffusionForcingPipeline,
                       SkyReelsV2DiffusionForcingVideoToVideoPipeline, SkyReelsV2Transformer3DModel,
                       UniPCMultistepScheduler)
from PIL import Image
from fixture_util import load_alt, moving_video, perturb, picture, run_jobs, save, stub_ftfy

stub_ftfy(df_module, df_i2v_module, df_v2v_module)

PROMPT, NEGATIVE = "a cat and a dog baking a cake", "blurred static"
H, W = 32, 48


class Draws:
    """Records every noise draw the pipeline makes, in order."""

    def __init__(self, module):
        self.module = module
        self.window_noise, self.addnoise = [], []
        self._randn_tensor = module.randn_tensor
        self._randn_like = torch.randn_like

    def __enter__(self):
        def randn_tensor(*a, **kw):
            t = self._randn_tensor(*a, **kw)
            self.window_noise.append(t.detach().clone())
            return t

        def randn_like(x, *a, **kw):
            t = self._randn_like(x, *a, **kw)
            self.addnoise.append(t.detach().clone())
            return t
        self.module.randn_tensor = randn_tensor
        torch.randn_like = randn_like
        return self

    def __exit__(self, *exc):
        self.module.randn_tensor = self._randn_tensor
        torch.randn_like = self._randn_like


def build(root):
    tok, te, vae, cfg = load_alt(root)
    torch.manual_seed(71)
    tr = SkyReelsV2Transformer3DModel(**cfg, inject_sample_info=True).eval()
    perturb(tr, seed=72)
    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000,
                                    flow_shift=8.0)
    pipe = SkyReelsV2DiffusionForcingPipeline(tokenizer=tok, text_encoder=te, transformer=tr, vae=vae,
                                              scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def matrices(pipe, refs):
    """generate_timestep_matrix alone, for settings the runs below do not reach."""
    settings = [  # num_latent_frames, steps, base, ar_step, pre_ready, causal_block
        (11, 10, 5, 5, 3, 1),
        (5, 10, 5, 0, 3, 1),
        (20, 30, 20, 5, 0, 5),
        (6, 3, 6, 1, 0, 2),
        (8, 4, 8, 2, 2, 2),
    ]
    pipe.scheduler.set_timesteps(30)
    for n, (f, steps, base, ar, pre, cb) in enumerate(settings):
        pipe.scheduler.set_timesteps(steps)
        m, _, mask, iv = pipe.generate_timestep_matrix(f, pipe.scheduler.timesteps, base, ar, pre, cb)
        refs[f"matrix.{n}.settings"] = torch.tensor([f, steps, base, ar, pre, cb], dtype=torch.float32)
        refs[f"matrix.{n}.template"] = pipe.scheduler.timesteps.float().clone()
        refs[f"matrix.{n}.steps"] = m.float()
        refs[f"matrix.{n}.update"] = mask.float()
        refs[f"matrix.{n}.interval"] = torch.tensor(iv, dtype=torch.float32)


def run(pipe, refs, prefix, seed, module=df_module, **kw):
    calls = []
    hook = pipe.transformer.register_forward_hook(
        lambda m, a, k, o: calls.append((k["timestep"].detach().float().clone(), o[0].detach().clone())),
        with_kwargs=True)
    rows = []

    def on_step(p, i, t, k):
        rows.append(k["latents"].detach().clone())
        return {}
    torch.manual_seed(seed + 1000)  # the global RNG that addnoise_condition draws from
    with Draws(module) as d, torch.no_grad():
        res = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, height=H, width=W,
                   generator=torch.Generator().manual_seed(seed), output_type="np", callback_on_step_end=on_step,
                   callback_on_step_end_tensor_inputs=["latents"], **kw)
    for i, t in enumerate(rows):
        refs[f"{prefix}.row{i}.latents"] = t
    hook.remove()
    for i, t in enumerate(d.window_noise):
        refs[f"{prefix}.window{i}.noise"] = t
    for i, t in enumerate(d.addnoise):
        refs[f"{prefix}.addnoise{i}"] = t
    for i, (t, out) in enumerate(calls):
        refs[f"{prefix}.call{i}.timestep"] = t
        refs[f"{prefix}.call{i}.out"] = out
    refs[f"{prefix}.frames"] = torch.from_numpy(np.ascontiguousarray(res.frames))
    print(f"{prefix}: {len(d.window_noise)} windows, {len(d.addnoise)} addnoise draws, {len(calls)} transformer calls")
    return len(d.window_noise), len(calls)


def skyreels(root):
    out = os.path.join(root, "skyreels-tiny-df")
    shutil.rmtree(out, ignore_errors=True)
    pipe = build(root)
    pipe.save_pretrained(os.path.join(out, "pipeline"), safe_serialization=True)
    refs = {}
    meta = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "height": H, "width": W, "flow_shift": 8.0}
    matrices(pipe, refs)
    long = dict(num_frames=41, base_num_frames=17, overlap_history=9, addnoise_condition=20.0, ar_step=0,
                num_inference_steps=3, guidance_scale=6.0, max_sequence_length=24, fps=24)
    windows, calls = run(pipe, refs, "long", 81, **long)
    assert windows >= 3, windows
    asyn = dict(num_frames=21, base_num_frames=21, ar_step=1, causal_block_size=2, num_inference_steps=3,
                guidance_scale=6.0, max_sequence_length=24, fps=16)
    run(pipe, refs, "async", 83, **asyn)
    # Image to video on the same folder (diffusers' DF image-to-video pipeline): the picture's latent frame is
    # the first window's given frame; three full windows (33 frames in windows of 17 overlapping by 9).
    i2v = SkyReelsV2DiffusionForcingImageToVideoPipeline(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder,
                                                         transformer=pipe.transformer, vae=pipe.vae,
                                                         scheduler=pipe.scheduler)
    i2v.transformer._set_ar_attention(1)
    i2v.set_progress_bar_config(disable=True)
    image = picture(91, H, W, shapes=3, max_radius=10)
    refs["i2v.image"] = torch.from_numpy(image)
    i2v_kw = dict(num_frames=33, base_num_frames=17, overlap_history=9, addnoise_condition=20.0, ar_step=0,
                  num_inference_steps=3, guidance_scale=5.0, max_sequence_length=24, fps=24)
    run(i2v, refs, "i2v", 87, module=df_i2v_module, image=Image.fromarray(image), **i2v_kw)
    meta.update({f"i2v.{k}": v for k, v in i2v_kw.items()})
    # Extension (diffusers' DF video-to-video pipeline): num_frames counts the 9 repeated frames and the 24 new.
    v2v = SkyReelsV2DiffusionForcingVideoToVideoPipeline(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder,
                                                         transformer=pipe.transformer, vae=pipe.vae,
                                                         scheduler=pipe.scheduler)
    v2v.set_progress_bar_config(disable=True)
    clip = moving_video(93, 13, H, W)
    refs["v2v.video"] = torch.from_numpy(clip)
    v2v_kw = dict(num_frames=9 + 24, base_num_frames=17, overlap_history=9, addnoise_condition=20.0, ar_step=0,
                  num_inference_steps=3, guidance_scale=5.0, max_sequence_length=24, fps=24)
    run(v2v, refs, "v2v", 89, module=df_v2v_module, video=[Image.fromarray(f) for f in clip], **v2v_kw)
    assert refs["v2v.frames"].shape[1] == 13 + 9 + 24, refs["v2v.frames"].shape
    meta.update({f"v2v.{k}": v for k, v in v2v_kw.items()})
    meta.update({f"long.{k}": v for k, v in long.items()})
    meta.update({f"async.{k}": v for k, v in asyn.items()})
    save(out, refs, meta)


if __name__ == "__main__":
    run_jobs(lambda root: {"skyreels-tiny-df": lambda: skyreels(root)})
