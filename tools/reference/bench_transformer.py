"""Time one forward of a Wan transformer folder with diffusers, on inputs saved for Sorrel to reuse.

usage: python tools/reference/bench_transformer.py TRANSFORMER_DIR OUT.safetensors [fp32|bf16 ...]
           [--latent F,H,W] [--layers N]

Writes OUT.safetensors with `x` (1,16,F,H,W; default 5,32,32), `t`, `context` (1,512,text_dim) and, per dtype,
`out_<dtype>` of the first N blocks (default all; `forward_bench` takes the same N as LAYERS=N),
and prints one line per dtype: seconds and peak RSS. `cargo test --release -p sorrel-models --test
wan_full_size -- --ignored` with SORREL_BENCH_INPUTS=OUT.safetensors runs Sorrel on the same inputs and
reports its time and its relative error against `out_fp32`.
"""
import resource
import sys
import time

import torch
from safetensors.torch import save_file
from diffusers import WanTransformer3DModel

args = sys.argv[1:]


def flag(name, default):
    """`--name VALUE` taken out of args."""
    if name in args:
        i = args.index(name)
        value = args[i + 1]
        del args[i:i + 2]
        return value
    return default


layers = int(flag("--layers", "0"))  # 0: all of them
latent = [int(v) for v in flag("--latent", "5,32,32").split(",")]  # latent frames, height, width
src, out = args[0], args[1]
dtypes = args[2:] or ["fp32"]
torch.set_num_threads(2)
g = torch.Generator().manual_seed(0)
x = torch.randn(1, 16, *latent, generator=g)
ctx = None
t = torch.tensor([999])
res = {"x": x, "t": t.float()}
for name in dtypes:
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[name]
    t0 = time.time()
    m = WanTransformer3DModel.from_pretrained(src, torch_dtype=dt).eval()
    if layers:
        m.blocks = m.blocks[:layers]
    load = time.time() - t0
    if ctx is None:
        ctx = torch.randn(1, 512, m.config.text_dim, generator=g)
        res["context"] = ctx
    with torch.no_grad():
        t1 = time.time()
        y = m(x.to(dt), t, ctx.to(dt), return_dict=False)[0]
        secs = time.time() - t1
    res[f"out_{name}"] = y.float().contiguous()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(f"pytorch {name}: load {load:.1f}s forward {secs:.2f}s peak RSS so far {rss:.2f} GB", flush=True)
    del m
save_file({k: v.contiguous() for k, v in res.items()}, out)
