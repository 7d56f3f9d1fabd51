"""Full-size Wan2.2 parts with random weights, side by side with Sorrel: the TI2V-5B transformer (bf16) and the
Wan2.2 VAE (fp32, 48 latent channels, 16x spatial).

usage:
  python tools/reference/bench_wan22.py make DIR                      # DIR/transformer (bf16), DIR/vae (fp32)
  python tools/reference/bench_wan22.py transformer DIR INPUTS OUT    # one forward, 1280x704, one latent frame
  python tools/reference/bench_wan22.py vae DIR INPUTS OUT            # one decode, 2 latent frames -> 5 at 256x256

`transformer` and `vae` write INPUTS (the random inputs) and OUT (`out`, diffusers' result) and print the time and
peak RSS; Sorrel runs the same files with `cargo run --release -p sorrel-models --example forward_bench -- DIR/transformer
DIR/transformer INPUTS bf16 1 OUT` and `--example vae_decode_bench -- DIR/vae INPUTS OUT 1`.
"""
import os
import resource
import sys
import time

import torch
from safetensors.torch import save_file
from diffusers import AutoencoderKLWan, WanTransformer3DModel

torch.set_num_threads(2)
TI2V_5B = dict(patch_size=(1, 2, 2), num_attention_heads=24, attention_head_dim=128, in_channels=48,
               out_channels=48, text_dim=4096, freq_dim=256, ffn_dim=14336, num_layers=30, cross_attn_norm=True,
               qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
WAN22_VAE = dict(base_dim=160, decoder_base_dim=256, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                 temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12,
                 patch_size=2, scale_factor_spatial=16, scale_factor_temporal=4,
                 latents_mean=[0.0] * 48, latents_std=[1.0] * 48)


def rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def make(d):
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    tr = WanTransformer3DModel(**TI2V_5B)
    with torch.no_grad():
        for p in tr.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.02)
    tr.save_pretrained(os.path.join(d, "transformer"), safe_serialization=True, max_shard_size="5GB")
    n = sum(p.numel() for p in tr.parameters())
    del tr
    torch.set_default_dtype(torch.float32)
    vae = AutoencoderKLWan(**WAN22_VAE)
    vae.save_pretrained(os.path.join(d, "vae"), safe_serialization=True)
    print(f"transformer {n / 1e9:.2f}B parameters (bf16), VAE {sum(p.numel() for p in vae.parameters()) / 1e6:.0f}M")


def transformer(d, inputs, out):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 48, 1, 44, 80, generator=g)
    ctx = torch.randn(1, 512, 4096, generator=g)
    t = torch.tensor([999.0])
    save_file({"x": x, "t": t, "context": ctx}, inputs)
    t0 = time.time()
    m = WanTransformer3DModel.from_pretrained(os.path.join(d, "transformer"), torch_dtype=torch.bfloat16).eval()
    load = time.time() - t0
    with torch.no_grad():
        t1 = time.time()
        y = m(x.bfloat16(), t, ctx.bfloat16(), return_dict=False)[0]
        secs = time.time() - t1
    save_file({"out": y.float().contiguous()}, out)
    print(f"diffusers TI2V-5B bf16, 880 tokens: load {load:.1f}s forward {secs:.2f}s peak RSS {rss():.2f} GB")


def vae(d, inputs, out):
    g = torch.Generator().manual_seed(2)
    z = torch.randn(1, 48, 2, 16, 16, generator=g)
    save_file({"z": z}, inputs)
    t0 = time.time()
    m = AutoencoderKLWan.from_pretrained(os.path.join(d, "vae")).eval()
    load = time.time() - t0
    with torch.no_grad():
        t1 = time.time()
        y = m.decode(z).sample
        secs = time.time() - t1
    save_file({"out": y.contiguous()}, out)
    print(f"diffusers Wan2.2 VAE fp32 decode {tuple(z.shape)} -> {tuple(y.shape)}: load {load:.1f}s decode {secs:.2f}s "
          f"peak RSS {rss():.2f} GB")


if __name__ == "__main__":
    cmd = sys.argv[1]
    {"make": lambda: make(sys.argv[2]), "transformer": lambda: transformer(*sys.argv[2:5]),
     "vae": lambda: vae(*sys.argv[2:5])}[cmd]()
