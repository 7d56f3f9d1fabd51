"""PyTorch side of crates/sorrel-models/examples/train_step_bench.rs: one flow-matching training step of
diffusers' WanTransformer3DModel at the embedded model's candidate size (4 heads x 32, 6 layers, ffn 512,
text width 128, 8 latent channels, 5x8x8 latents = 80 tokens, 16 text tokens, batch 64), f32, timed as
forward, backward and AdamW; median of 5 after 2 warm-up steps.

usage: bench_train_step.py   (torch threads = os.cpu_count())
"""

import statistics
import time

import torch
from diffusers import WanTransformer3DModel

torch.manual_seed(0)
B, C, F, H, W, L = 64, 8, 5, 8, 8, 16
model = WanTransformer3DModel(
    patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=32, in_channels=C, out_channels=C,
    text_dim=128, freq_dim=256, ffn_dim=512, num_layers=6, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=32,
)
opt = torch.optim.AdamW(model.parameters(), lr=5e-4)
params = sum(p.numel() for p in model.parameters())
fw, bw, up = [], [], []
for step in range(7):
    x0 = torch.randn(B, C, F, H, W)
    noise = torch.randn_like(x0)
    sigma = torch.rand(B)
    s = sigma.view(B, 1, 1, 1, 1)
    xt = (1 - s) * x0 + s * noise
    text = torch.randn(B, L, 128)
    t0 = time.perf_counter()
    pred = model(xt, sigma * 1000, text, return_dict=False)[0]
    loss = ((pred - (noise - x0)) ** 2).mean()
    loss.item()
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    opt.step()
    opt.zero_grad(set_to_none=True)
    t3 = time.perf_counter()
    if step >= 2:
        fw.append(t1 - t0)
        bw.append(t2 - t1)
        up.append(t3 - t2)
fw, bw, up = statistics.median(fw), statistics.median(bw), statistics.median(up)
total = fw + bw + up
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {params} parameters")
print(f"forward {fw:.3f} s, backward {bw:.3f} s, AdamW {up:.3f} s; step {total:.3f} s = {B / total:.0f} clips/s")
