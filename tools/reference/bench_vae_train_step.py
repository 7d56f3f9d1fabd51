"""PyTorch side of crates/sorrel-models/examples/vae_train_step_bench.rs: one training step of diffusers'
AutoencoderKLWan at the toy-world size (base_dim 16, z_dim 8, dim_mult [1,2,4], one residual block, time
halved twice), 17-frame 32x32 clips, batch 16: encode, decode the posterior mean, L1 + L2, backward, AdamW;
median of 3 after 1 warm-up step.
"""

import statistics
import time

import torch
from diffusers import AutoencoderKLWan

torch.manual_seed(0)
vae = AutoencoderKLWan(base_dim=16, z_dim=8, dim_mult=[1, 2, 4], num_res_blocks=1, attn_scales=[],
                       temperal_downsample=[True, True], latents_mean=[0.0] * 8, latents_std=[1.0] * 8)
opt = torch.optim.AdamW(vae.parameters(), lr=1e-3)
params = sum(p.numel() for p in vae.parameters())
fw, bw = [], []
for step in range(4):
    x = torch.rand(16, 3, 17, 32, 32) * 2 - 1
    t0 = time.perf_counter()
    mean = vae.encode(x).latent_dist.mean
    y = vae.decode(mean).sample
    d = y - x
    loss = d.abs().mean() + (d ** 2).mean()
    loss.item()
    t1 = time.perf_counter()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    t2 = time.perf_counter()
    if step >= 1:
        fw.append(t1 - t0)
        bw.append(t2 - t1)
fw, bw = statistics.median(fw), statistics.median(bw)
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {params} parameters, latents {list(mean.shape)}")
print(f"forward {fw:.3f} s, backward + AdamW {bw:.3f} s; step {fw + bw:.3f} s = {16 / (fw + bw):.0f} clips/s")
