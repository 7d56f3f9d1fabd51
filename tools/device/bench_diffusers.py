"""diffusers' half of the GPU benchmark: Wan2.1-T2V-1.3B's transformer (random weights, the real config) at
832x480, 81 frames (21x60x104 latents, 32,760 tokens), STEPS denoising steps with guidance on one GPU.

usage: python tools/device/bench_diffusers.py make WEIGHTS_DIR
       python tools/device/bench_diffusers.py run WEIGHTS_DIR INPUTS.safetensors STEPS [bf16|fp32]
           [--latent F,H,W] [--cpu]

`make` writes WEIGHTS_DIR (a diffusers transformer folder, bf16 safetensors, seed 0). `run` times the steps as
WanPipeline runs them (a conditional and an unconditional forward, then uncond + 5 (cond - uncond)), and saves
the inputs with the first timed step's output (`out_first`) to INPUTS for `device_check bench`, which runs
Sorrel on the same weights and inputs. Prints one JSON line: each step's seconds and torch's peak memory.
`--latent` and `--cpu` are for trying the harness on a small model without a GPU (`tools/cuda/dry_run.sh`).
"""
import json
import os
import sys
import time

import torch
from safetensors.torch import save_file
from diffusers import WanTransformer3DModel

# Wan-AI/Wan2.1-T2V-1.3B-Diffusers transformer/config.json (the fields that shape the model).
CONFIG = dict(
    patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
    text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None, added_kv_proj_dim=None, rope_max_seq_len=1024,
)
LATENT = (21, 60, 104)  # 81 frames of 832x480 through Wan's VAE (4x in time, 8x in space)
GUIDANCE = 5.0


def make(weights):
    """Random weights in the real shapes (the timing does not depend on their values)."""
    torch.manual_seed(0)
    t0 = time.time()
    # Built on the GPU: 1.3 B parameters initialise in seconds there; the CPU would take minutes.
    with torch.device("cuda"):
        m = WanTransformer3DModel(**CONFIG)
    # N(0, 0.02) as tools/reference/make_fixtures.py's full-size transformer: activations stay finite through
    # 30 blocks in bf16, where PyTorch's default initialisation can overflow.
    g = torch.Generator(device="cuda").manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, device="cuda") * 0.02)
    m.to(torch.bfloat16).save_pretrained(weights, safe_serialization=True, max_shard_size="20GB")
    print(f"random weights written to {weights} in {time.time() - t0:.1f}s", file=sys.stderr, flush=True)


def main():
    args = sys.argv[1:]
    cpu = "--cpu" in args
    if cpu:
        args.remove("--cpu")
    latent = LATENT
    if "--latent" in args:
        i = args.index("--latent")
        latent = tuple(int(v) for v in args[i + 1].split(","))
        del args[i:i + 2]
    if args[:1] == ["make"] and len(args) == 2 and os.path.exists(os.path.join(args[1], "config.json")):
        return None  # already made (or a model folder given to try the harness on)
    if not cpu and not torch.cuda.is_available():
        sys.exit("bench_diffusers.py: torch sees no CUDA GPU")
    if args[:1] == ["make"] and len(args) == 2:
        return make(args[1])
    if args[:1] != ["run"] or len(args) not in (4, 5):
        sys.exit(__doc__)
    weights, inputs, steps = args[1], args[2], int(args[3])
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args[4] if len(args) > 4 else "bf16"]
    dev = torch.device("cpu" if cpu else "cuda")
    sync = (lambda: None) if cpu else torch.cuda.synchronize
    t0 = time.time()
    m = WanTransformer3DModel.from_pretrained(weights, torch_dtype=dtype).to(dev).eval()
    sync()
    load = time.time() - t0
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, m.config.in_channels, *latent, generator=g)
    ctx = torch.randn(1, 512, m.config.text_dim, generator=g)
    neg = torch.randn(1, 512, m.config.text_dim, generator=g)
    t = torch.tensor([999.0])
    xd, td, cd, nd = x.to(dev, dtype), t.to(dev), ctx.to(dev, dtype), neg.to(dev, dtype)
    if not cpu:
        torch.cuda.reset_peak_memory_stats()
    times, first = [], None
    with torch.no_grad():
        # One step unmeasured first: kernels load and the caching allocator fills on first use.
        for i in range(steps + 1):
            sync()
            t1 = time.time()
            c = m(xd, td, cd, return_dict=False)[0].float()
            u = m(xd, td, nd, return_dict=False)[0].float()
            pred = u + GUIDANCE * (c - u)
            sync()
            if i > 0:
                times.append(time.time() - t1)
            if first is None:
                first = pred.cpu()
    save_file({"x": x, "t": t, "context": ctx, "negative_context": neg, "out_first": first.contiguous()}, inputs)
    print(json.dumps({
        "check": "bench", "program": "diffusers", "device": "cpu" if cpu else torch.cuda.get_device_name(),
        "dtype": str(dtype), "load_seconds": load, "step_seconds": times,
        "median_step_seconds": sorted(times)[len(times) // 2],
        "torch_peak_allocated_bytes": 0 if cpu else torch.cuda.max_memory_allocated(),
        "torch_peak_reserved_bytes": 0 if cpu else torch.cuda.max_memory_reserved(),
        "versions": {"torch": torch.__version__, "diffusers": __import__("diffusers").__version__},
    }), flush=True)


if __name__ == "__main__":
    main()
