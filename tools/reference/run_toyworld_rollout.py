"""One continuing window of a rollout of Sorrel's embedded model, written out with diffusers' own parts, for
the parity test of extension (`sorrel generate --extend`, `crates/sorrel-cli/tests/embedded.rs`).

usage: python tools/reference/run_toyworld_rollout.py MODEL_DIR CONTEXT.safetensors OUT.safetensors
       python tools/reference/run_toyworld_rollout.py MODEL_DIR --bench SECONDS

The second form times a whole rollout of SECONDS of video made the same way (a first window from noise, then
windows of 4 given and 4 new latent frames, one decode at the end), for the side-by-side benchmark with
`sorrel generate --seconds SECONDS` in docs/benchmarks.md; it prints the wall time and the peak RSS.

CONTEXT.safetensors holds `frames` (F,H,W,3 in [0,1]), the clip to continue: its last 4 frames are the given
context, as Sorrel takes them. The window is what `sorrel/crates/sorrel-pipeline/src/rollout.rs` documents:
the context encoded frame by frame with the folder's VAE (posterior mean, normalised by latents_mean/std),
placed as latent frames 0-3 of an 8-frame window whose frames 4-7 start from torch-seeded noise; at every
step of the folder's FlowMatch Euler schedule the transformer (diffusers' WanTransformer3DModel) sees
per-token timesteps, 0 on the two token slices of given frames and t on the others, classifier-free guidance
combines the prompt's and the empty prompt's predictions, the scheduler steps, and the given frames are put
back. The new latent frames are decoded with the VAE.

Saves `context` (the u8 context frames as given, F,H,W,3), `latents` (the window's starting noise),
`frames` (the 4 new frames, 4,H,W,3 in [0,1]); the same for image to video from the clip's first frame
(`image`, `image.latents`, `image.frames`: the 7 frames after it, its own slice told the level of the rest);
and the prompt and settings as metadata.
"""
import json
import os
import sys

import torch
from diffusers import WanPipeline
from safetensors.torch import load_file, save_file

PROMPT = "a red ball moves to the right on a blue floor"
CONTEXT, NEW = 4, 4

src = sys.argv[1]
bench = sys.argv[2] == "--bench"
ctx_path, out = (None, None) if bench else (sys.argv[2], sys.argv[3])
torch.set_num_threads(2)
d = json.load(open(os.path.join(src, "sorrel_defaults.json")))
pipe = WanPipeline.from_pretrained(src, torch_dtype=torch.float32)
vae, tr, sched = pipe.vae, pipe.transformer, pipe.scheduler

mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
cond, uncond = pipe.encode_prompt(PROMPT, negative_prompt="", do_classifier_free_guidance=True,
                                  max_sequence_length=d["max_sequence_length"])
pt, ph, pw = tr.config.patch_size


def denoise(ctx, new, noise):
    """Denoises a window of the given latent frames `ctx` (1, zc, k, h, w) then `new` frames from `noise`;
    returns the window's latents."""
    k = ctx.shape[2]
    h, w = noise.shape[3], noise.shape[4]
    latents = noise.clone()
    latents[:, :, :k] = ctx
    per_slice = (h // ph) * (w // pw)
    # A slice is told t = 0 when all its frames are given.
    told = [0.0 if all(f < k for f in range(j * pt, (j + 1) * pt)) else 1.0 for j in range((k + new) // pt)]
    weights = torch.tensor(told).repeat_interleave(per_slice)[None]
    sched.set_timesteps(d["steps"])
    with torch.no_grad():
        for t in sched.timesteps:
            tt = weights * t
            c = tr(hidden_states=latents, timestep=tt, encoder_hidden_states=cond, return_dict=False)[0]
            u = tr(hidden_states=latents, timestep=tt, encoder_hidden_states=uncond, return_dict=False)[0]
            pred = u + d["guidance"] * (c - u)
            latents = sched.step(pred, t, latents, return_dict=False)[0]
            latents[:, :, :k] = ctx
    return latents


def decode(latents):
    """Normalised latents -> frames (F, H, W, 3) in [0, 1]."""
    with torch.no_grad():
        frames = vae.decode(latents / inv_std + mean, return_dict=False)[0]
    return (frames / 2 + 0.5).clamp(0, 1)[0].permute(1, 2, 3, 0).contiguous().float()


def window(given, new, seed):
    """Denoises a window of len(given) given frames (u8, F,H,W,3) then `new` frames; returns the starting
    noise and the decoded new frames."""
    k = given.shape[0]
    x = given.float().permute(3, 0, 1, 2) / 255.0 * 2.0 - 1.0  # (3, k, H, W)
    with torch.no_grad():
        # Frame by frame, as the model's VAE was trained and as Sorrel encodes it.
        z = torch.cat([vae.encode(x[:, i:i + 1].unsqueeze(0)).latent_dist.mode() for i in range(k)], 2)
    ctx = (z - mean) * inv_std  # (1, zc, k, h, w)
    noise = torch.randn(1, ctx.shape[1], k + new, ctx.shape[3], ctx.shape[4],
                        generator=torch.Generator().manual_seed(seed))
    return noise, decode(denoise(ctx, new, noise)[:, :, k:])


if bench:
    import resource
    import time
    seconds = int(sys.argv[3])
    frames, zc = seconds * d["fps"], vae.config.z_dim
    s = 2 ** len(vae.config.temperal_downsample)
    h, w = d["height"] // s, d["width"] // s
    t0 = time.time()
    g = torch.Generator().manual_seed(0)
    seq = denoise(torch.zeros(1, zc, 0, h, w), d["frames"], torch.randn(1, zc, d["frames"], h, w, generator=g))
    while seq.shape[2] < frames:
        noise = torch.randn(1, zc, d["frames"], h, w, generator=g)
        win = denoise(seq[:, :, -CONTEXT:], d["frames"] - CONTEXT, noise)
        seq = torch.cat([seq, win[:, :, CONTEXT:]], 2)
    video = decode(seq[:, :, :frames])
    wall = time.time() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
    print(f"diffusers parts: {seconds} s of video ({video.shape[0]} frames) in {wall:.1f} s, "
          f"{wall / seconds:.2f} s per second of video, peak RSS {rss:.0f} MB")
    sys.exit(0)

# The clip as Sorrel reads it: 8-bit frames.
clip = (load_file(ctx_path)["frames"].clamp(0, 1) * 255).round().to(torch.uint8)


# Extension: the clip's last 4 frames given, 4 new. Image to video: its first frame given, 7 new (the
# first frame's token slice is told the level of the rest, as trained).
ext_noise, ext_frames = window(clip[-CONTEXT:], NEW, 0)
img_noise, img_frames = window(clip[:1], d["frames"] - 1, 1)
save_file({"context": clip[-CONTEXT:].contiguous(), "latents": ext_noise, "frames": ext_frames,
           "image": clip[0].contiguous(), "image.latents": img_noise, "image.frames": img_frames}, out,
          metadata={"prompt": PROMPT, "steps": str(d["steps"]), "guidance": str(d["guidance"])})
print(f"wrote {out}: {NEW} new frames after {CONTEXT} given; {d['frames'] - 1} after a first frame")
