"""Reference fixtures for the Wan generation modes other than text-to-video: video-to-video, image-to-video and
first/last-frame-to-video, run with diffusers' own pipelines on tiny random weights.

usage:
  python tools/reference/make_mode_fixtures.py tests/fixtures     # after make_fixtures.py (it reuses wan-tiny-alt)

Pinned as make_fixtures.py: diffusers 0.42.1, transformers 5.24.0, torch 2.15.0, no torchvision (so
CLIPImageProcessor runs its PIL path) and no ftfy (the mode pipelines call `ftfy.fix_text` without importing it
when it is missing; our prompts are ASCII, on which fix_text is the identity, so it is stubbed as the identity).

Every fixture is 48x32 (non-square) on wan-tiny-alt's text encoder, tokenizer and VAE (channel changes, two resnets
per block):
  wan-tiny-v2v/     WanVideoToVideoPipeline on wan-tiny-alt's T2V transformer, 13 frames, strength 0.7, 5 steps
  wan-tiny-i2v/     WanImageToVideoPipeline: a 36-channel transformer with image cross-attention and a tiny CLIP
                    ViT (hidden_states[-2]), 13 frames, 4 steps
  wan-tiny-flf2v/   the same with `last_image` and the image embedding's learned position table (FLF2V)
  wan-tiny-vace/    WanVACEPipeline, VACE layers [0, 2] of 3, 4 steps, two runs: `extend` (5 known frames then 8 to
                    generate, a 24x24 reference picture fitted on the white canvas) and `inpaint` (the moving clip
                    with a white rectangle to regenerate in every frame)
Each holds reference.safetensors (inputs as uint8 pictures, the raw noise, every stage's output) and the I2V
ones a `pipeline/` folder as Wan-AI ship theirs (image_encoder/, image_processor/ added).
"""
import os
import shutil

import numpy as np
import torch
from PIL import Image
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

import diffusers.pipelines.wan.pipeline_wan_i2v as i2v_module
import diffusers.pipelines.wan.pipeline_wan_vace as vace_module
import diffusers.pipelines.wan.pipeline_wan_video2video as v2v_module
from diffusers import (AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline, WanTransformer3DModel,
                       WanVACEPipeline, WanVACETransformer3DModel, WanVideoToVideoPipeline)
from transformers import AutoTokenizer, UMT5EncoderModel
from fixture_util import perturb, run_jobs, save, stub_ftfy
from fixture_util import picture as shared_picture

stub_ftfy(i2v_module, v2v_module, vace_module)

H, W, F = 32, 48, 13


def picture(seed, h=H, w=W):
    """A smooth picture with three hard-edged shapes (u8, H x W x 3), so the VAE has structure to keep."""
    return shared_picture(seed, h, w, shapes=3, max_radius=10)


def moving_video(seed):
    """F frames of a picture sliding right one pixel a frame (u8, F x H x W x 3)."""
    base = picture(seed, H, W + F)
    return np.stack([base[:, F - i:F - i + W] for i in range(F)])


def load_alt(root):
    p = os.path.join(root, "wan-tiny-alt", "pipeline")
    tok = AutoTokenizer.from_pretrained(os.path.join(p, "tokenizer"))
    te = UMT5EncoderModel.from_pretrained(os.path.join(p, "text_encoder")).eval()
    vae = AutoencoderKLWan.from_pretrained(os.path.join(p, "vae")).eval()
    tr = WanTransformer3DModel.from_pretrained(os.path.join(p, "transformer")).eval()
    return tok, te, vae, tr


def recorder(transformer, refs):
    calls = []
    hook = transformer.register_forward_hook(lambda m, a, kw, o: calls.append(o[0].detach().clone()),
                                             with_kwargs=True)

    def on_step(p, i, t, kw):
        refs[f"step{i}.latents_after"] = kw["latents"].detach().clone()
        refs[f"step{i}.timestep"] = t.detach().reshape(1).float().clone()
        return {}
    return calls, hook, on_step


def v2v(root):
    tok, te, vae, tr = load_alt(root)
    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                    num_train_timesteps=1000, flow_shift=5.0)
    pipe = WanVideoToVideoPipeline(tokenizer=tok, text_encoder=te, vae=vae, scheduler=sched, transformer=tr)
    pipe.set_progress_bar_config(disable=True)
    prompt, negative, steps, strength, msl = "a cat and a dog baking a cake", "blurred static", 5, 0.7, 24
    video = moving_video(5)
    refs = {"video": torch.from_numpy(video)}
    calls, hook, on_step = recorder(tr, refs)
    # The pipeline draws its noise first from this generator; the same draw is saved for Sorrel.
    shape = (1, 16, (F - 1) // 4 + 1, H // 8, W // 8)
    refs["noise"] = torch.randn(shape, generator=torch.Generator().manual_seed(11), dtype=torch.float32)
    enc = vae.encode(pipe.video_processor.preprocess_video([Image.fromarray(f) for f in video], H, W)).latent_dist
    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1)
    std = 1.0 / torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1)
    refs["video_latents"] = ((enc.mean - mean) * std).detach()
    res = pipe(video=[Image.fromarray(f) for f in video], prompt=prompt, negative_prompt=negative, height=H, width=W,
               num_inference_steps=steps, guidance_scale=5.0, strength=strength, max_sequence_length=msl,
               generator=torch.Generator().manual_seed(11), output_type="np", callback_on_step_end=on_step,
               callback_on_step_end_tensor_inputs=["latents"])
    hook.remove()
    run = len(calls) // 2
    for i in range(run):
        refs[f"step{i}.noise_pred_cond"], refs[f"step{i}.noise_pred_uncond"] = calls[2 * i], calls[2 * i + 1]
    refs["scheduler.timesteps"] = pipe.scheduler.timesteps.float().clone()
    refs["scheduler.sigmas"] = pipe.scheduler.sigmas.float().clone()
    refs["frames"] = torch.from_numpy(np.ascontiguousarray(res.frames))
    with torch.no_grad():
        # One timestep per token (Wan2.2 TI2V's and diffusion forcing's form): the first latent frame's tokens
        # at 0, the rest at 750, on wan-tiny-alt's transformer (3 x 2 x 3 = 18 tokens).
        x = torch.randn(1, 16, 3, H // 8, W // 8, generator=torch.Generator().manual_seed(4))
        t = torch.tensor([[0.0] * 6 + [750.0] * 12])
        pe, _ = pipe.encode_prompt(prompt, negative, True, 1, max_sequence_length=msl, device="cpu")
        refs["unit.per_token.in"], refs["unit.per_token.t"], refs["unit.per_token.text"] = x, t, pe
        refs["unit.per_token.out"] = tr(x, t, pe, return_dict=False)[0]
    save(os.path.join(root, "wan-tiny-v2v"), refs, dict(
        prompt=prompt, negative_prompt=negative, height=H, width=W, num_frames=F, steps=steps, strength=strength,
        steps_run=run, guidance_scale=5.0, max_sequence_length=msl, pipeline="wan-tiny-alt/pipeline"))
    print(f"v2v: {run} of {steps} steps, timesteps {pipe.scheduler.timesteps.tolist()}")


def clip_parts():
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=40, num_hidden_layers=3, num_attention_heads=4,
                           image_size=32, patch_size=8, hidden_act="gelu", layer_norm_eps=1e-5, projection_dim=16)
    torch.manual_seed(0)
    enc = CLIPVisionModel(cfg).eval()
    perturb(enc, seed=5)
    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, resample=3)
    return enc, proc


def i2v(root, name, last):
    tok, te, vae, alt = load_alt(root)
    cfg = dict(alt.config)
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    inner = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    clip, proc = clip_parts()
    cfg.update(in_channels=36, image_dim=32, added_kv_proj_dim=inner,
               pos_embed_seq_len=2 * 17 if last else None)
    torch.manual_seed(0)
    tr = WanTransformer3DModel(**cfg).eval()
    perturb(tr, seed=7)
    shift = 16.0 if last else 5.0  # what Wan-AI ship for FLF2V and for I2V 720p
    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                    num_train_timesteps=1000, flow_shift=shift)
    pipe = WanImageToVideoPipeline(tokenizer=tok, text_encoder=te, vae=vae, scheduler=sched, image_processor=proc,
                                   image_encoder=clip, transformer=tr)
    pipe.set_progress_bar_config(disable=True)
    # diffusers splits image from text tokens assuming 512 text tokens, so the fixture uses 512.
    prompt, negative, steps, msl = "a cat and a dog baking a cake", "blurred static", 4, 512
    image = picture(21)
    last_image = picture(22) if last else None
    refs = {"image": torch.from_numpy(image)}
    if last:
        refs["last_image"] = torch.from_numpy(last_image)
    pil = Image.fromarray(image)
    last_pil = Image.fromarray(last_image) if last else None
    with torch.no_grad():
        px = proc(images=[pil] + ([last_pil] if last else []), return_tensors="pt").pixel_values
        refs["clip.pixel_values"] = px
        refs["clip.hidden_states_penultimate"] = clip(pixel_values=px, output_hidden_states=True).hidden_states[-2]
        pe, _ = pipe.encode_prompt(prompt, negative, True, 1, max_sequence_length=msl, device="cpu")
    calls, hook, on_step = recorder(tr, refs)
    shape = (1, 16, (F - 1) // 4 + 1, H // 8, W // 8)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(13), dtype=torch.float32)
    refs["latents_init"] = noise.clone()
    with torch.no_grad():
        img_t = pipe.video_processor.preprocess(pil, height=H, width=W).float()
        last_t = pipe.video_processor.preprocess(last_pil, height=H, width=W).float() if last else None
        _, cond = pipe.prepare_latents(img_t, 1, 16, H, W, F, torch.float32, "cpu", None, noise.clone(), last_t)
    refs["condition"] = cond
    res = pipe(image=pil, last_image=last_pil, prompt=prompt, negative_prompt=negative, height=H, width=W,
               num_frames=F, num_inference_steps=steps, guidance_scale=5.0, max_sequence_length=msl,
               latents=noise.clone(), output_type="np", callback_on_step_end=on_step,
               callback_on_step_end_tensor_inputs=["latents"])
    hook.remove()
    for i in range(steps):
        refs[f"step{i}.noise_pred_cond"], refs[f"step{i}.noise_pred_uncond"] = calls[2 * i], calls[2 * i + 1]
    refs["scheduler.timesteps"] = pipe.scheduler.timesteps.float().clone()
    refs["frames"] = torch.from_numpy(np.ascontiguousarray(res.frames))
    with torch.no_grad():
        x = torch.randn(1, 36, 2, H // 8, W // 8, generator=torch.Generator().manual_seed(1))
        emb = refs["clip.hidden_states_penultimate"]
        refs["unit.transformer.in"] = x
        refs["unit.transformer.text"] = pe
        refs["unit.transformer.out"] = tr(x, torch.tensor([750]), pe, encoder_hidden_states_image=emb,
                                          return_dict=False)[0]
    out = os.path.join(root, name)
    shutil.rmtree(out, ignore_errors=True)
    save(out, refs, dict(prompt=prompt, negative_prompt=negative, height=H, width=W, num_frames=F, steps=steps,
                         guidance_scale=5.0, max_sequence_length=msl, flow_shift=shift))
    pipe.save_pretrained(os.path.join(out, "pipeline"), safe_serialization=True)
    print(f"{name}: timesteps {pipe.scheduler.timesteps.tolist()}")


GRAY = 128  # diffusers' example fills frames to generate with (128, 128, 128)


def vace(root):
    tok, te, vae, alt = load_alt(root)
    cfg = {k: v for k, v in dict(alt.config).items() if not k.startswith("_")}
    cfg.update(vace_layers=[0, 2], vace_in_channels=96)
    torch.manual_seed(0)
    tr = WanVACETransformer3DModel(**cfg).eval()
    perturb(tr, seed=9)
    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                    num_train_timesteps=1000, flow_shift=3.0)
    pipe = WanVACEPipeline(tokenizer=tok, text_encoder=te, vae=vae, scheduler=sched, transformer=tr)
    pipe.set_progress_bar_config(disable=True)
    prompt, negative, steps, msl = "a cat and a dog baking a cake", "blurred static", 4, 24
    clip = moving_video(31)
    gray = np.full((H, W, 3), GRAY, np.uint8)
    black, white = np.zeros((H, W), np.uint8), np.full((H, W), 255, np.uint8)
    hole = black.copy()
    hole[8:24, 12:36] = 255
    runs = {
        # 5 known frames, 8 to generate after them, and a reference picture of another size (fitted)
        "extend": ([clip[i] for i in range(5)] + [gray] * (F - 5), [black] * 5 + [white] * (F - 5),
                   [picture(33, 24, 24)]),
        # the clip with a rectangle to regenerate in every frame
        "inpaint": (list(clip), [hole] * F, None),
    }
    refs = {}
    for run, (video, mask, references) in runs.items():
        nref = len(references or [])
        refs[f"{run}.video"] = torch.from_numpy(np.stack(video))
        refs[f"{run}.mask"] = torch.from_numpy(np.stack(mask))
        if references:
            refs[f"{run}.reference0"] = torch.from_numpy(references[0])
        shape = (1, 16, (F - 1) // 4 + 1 + nref, H // 8, W // 8)
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(17), dtype=torch.float32)
        refs[f"{run}.latents_init"] = noise.clone()
        pv = [Image.fromarray(f) for f in video]
        pm = [Image.fromarray(m) for m in mask]
        pr = [Image.fromarray(r) for r in references] if references else None
        with torch.no_grad():
            v, m, r = pipe.preprocess_conditions(pv, pm, pr, 1, H, W, F, torch.float32, "cpu")
            lat = pipe.prepare_video_latents(v, m, r, None, "cpu")
            msk = pipe.prepare_masks(m, r, None)
        refs[f"{run}.control"] = torch.cat([lat, msk], dim=1)
        def on_step(p, i, t, kw, run=run):
            refs[f"{run}.step{i}.latents_after"] = kw["latents"].detach().clone()
            return {}
        res = pipe(video=pv, mask=pm, reference_images=pr, prompt=prompt, negative_prompt=negative, height=H,
                   width=W, num_frames=F, num_inference_steps=steps, guidance_scale=5.0, max_sequence_length=msl,
                   latents=noise.clone(), output_type="np", callback_on_step_end=on_step,
                   callback_on_step_end_tensor_inputs=["latents"])
        refs[f"{run}.frames"] = torch.from_numpy(np.ascontiguousarray(res.frames))
    with torch.no_grad():
        pe, _ = pipe.encode_prompt(prompt, negative, True, 1, max_sequence_length=msl, device="cpu")
        x = torch.randn(1, 16, 3, H // 8, W // 8, generator=torch.Generator().manual_seed(1))
        c = refs["inpaint.control"][:, :, :3]
        refs["unit.transformer.in"], refs["unit.transformer.control"] = x, c
        refs["unit.transformer.text"] = pe
        refs["unit.transformer.out"] = tr(x, torch.tensor([750]), pe, control_hidden_states=c,
                                          control_hidden_states_scale=torch.tensor([1.0, 0.5]),
                                          return_dict=False)[0]
    out = os.path.join(root, "wan-tiny-vace")
    shutil.rmtree(out, ignore_errors=True)
    save(out, refs, dict(prompt=prompt, negative_prompt=negative, height=H, width=W, num_frames=F, steps=steps,
                         guidance_scale=5.0, max_sequence_length=msl, gray=GRAY, unit_scale="1.0,0.5"))
    pipe.save_pretrained(os.path.join(out, "pipeline"), safe_serialization=True)
    print(f"wan-tiny-vace: timesteps {pipe.scheduler.timesteps.tolist()}")


if __name__ == "__main__":
    run_jobs(lambda root: {"wan-tiny-v2v": lambda: v2v(root), "wan-tiny-i2v": lambda: i2v(root, "wan-tiny-i2v", False),
                           "wan-tiny-flf2v": lambda: i2v(root, "wan-tiny-flf2v", True),
                           "wan-tiny-vace": lambda: vace(root)})
