"""A random-weight Wan2.1-VACE-1.3B transformer (full size) and one timed diffusers forward on saved inputs.

usage:
  python tools/reference/bench_vace.py make OUT_DIR            # writes OUT_DIR/transformer (bf16 storage, 4.2 GB)
  python tools/reference/bench_vace.py run OUT_DIR IN.safetensors   # times one fp32 forward, saves inputs + output

The config is Wan-AI/Wan2.1-VACE-1.3B-diffusers' transformer: Wan2.1-T2V-1.3B (30 layers, 1536 wide, 12 heads,
ffn 8960) with 15 VACE blocks after layers 0, 2, ..., 28 and a 96-channel control input. Stored in bf16 to halve the
disk and the load; both programs compute in fp32 from the same rounded values. The inputs match bench_transformer.py
(latent (1,16,5,32,32) = 1,280 tokens, 512x4096 text) plus a control input (1,96,5,32,32); `cargo test --release -p
sorrel-models --test wan_full_size -- --ignored` with SORREL_VACE_DIR and SORREL_VACE_INPUTS runs Sorrel on them.
"""
import os
import resource
import sys
import time

import torch
from safetensors.torch import save_file
from diffusers import WanVACETransformer3DModel

CFG = dict(added_kv_proj_dim=None, attention_head_dim=128, cross_attn_norm=True, eps=1e-06, ffn_dim=8960,
           freq_dim=256, in_channels=16, num_attention_heads=12, num_layers=30, out_channels=16,
           patch_size=[1, 2, 2], qk_norm="rms_norm_across_heads", text_dim=4096,
           vace_layers=list(range(0, 30, 2)), vace_in_channels=96)

mode, out = sys.argv[1], sys.argv[2]
torch.set_num_threads(2)
if mode == "make":
    with torch.device("meta"):
        m = WanVACETransformer3DModel(**CFG)
    m = m.to_empty(device="cpu").to(torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    m.save_pretrained(os.path.join(out, "transformer"), safe_serialization=True, max_shard_size="20GB")
    print("written", sum(p.numel() for p in m.parameters()) / 1e9, "B parameters")
else:
    g = torch.Generator().manual_seed(0)
    res = {"x": torch.randn(1, 16, 5, 32, 32, generator=g), "t": torch.tensor([999.0]),
           "context": torch.randn(1, 512, 4096, generator=g), "control": torch.randn(1, 96, 5, 32, 32, generator=g)}
    t0 = time.time()
    m = WanVACETransformer3DModel.from_pretrained(os.path.join(out, "transformer"), torch_dtype=torch.float32).eval()
    load = time.time() - t0
    with torch.no_grad():
        t1 = time.time()
        y = m(res["x"], torch.tensor([999]), res["context"], control_hidden_states=res["control"],
              return_dict=False)[0]
        secs = time.time() - t1
    res["out_fp32"] = y.contiguous()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(f"pytorch vace fp32: load {load:.1f}s forward {secs:.2f}s peak RSS {rss:.2f} GB", flush=True)
    save_file({k: v.contiguous() for k, v in res.items()}, sys.argv[3])
