"""Time one Wan transformer forward from a GGUF file with diffusers' GGUF support (weights kept quantized,
expanded per layer in `compute_dtype`, as Sorrel does), on the inputs `bench_transformer.py` saved.

usage: python tools/reference/bench_gguf.py TRANSFORMER_DIR FILE.gguf INPUTS.safetensors OUT.safetensors [RUNS]

Prints load time, each forward's time, peak RSS, and the error against PyTorch's fp32 output in INPUTS; writes
the output to OUT.safetensors (`out`) so Sorrel's output on the same file can be compared with it.
"""
import resource
import sys
import time

import gguf
import numpy as np
import torch
from diffusers import GGUFQuantizationConfig, WanTransformer3DModel
from safetensors.torch import load_file, save_file


def restore_shapes(src, dst):
    """diffusers does not read ComfyUI-GGUF's `comfy.gguf.orig_shape.NAME` (tensors of more than 4 dimensions
    stored flattened): a copy with those tensors in their own shape, every other tensor's bytes unchanged."""
    r = gguf.GGUFReader(src)
    shapes = {}
    for f in r.fields.values():
        if f.name.startswith("comfy.gguf.orig_shape."):
            shapes[f.name[len("comfy.gguf.orig_shape."):]] = [int(f.parts[i][0]) for i in f.data]
    w = gguf.GGUFWriter(dst, arch="wan")
    for t in r.tensors:
        if t.name in shapes:
            a = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shapes[t.name]).astype(np.float32)
            w.add_tensor(t.name, a)
        else:
            plain_float = t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
            w.add_tensor(t.name, np.array(t.data), raw_dtype=None if plain_float else t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


cfg_dir, gguf_file, inputs, out = sys.argv[1:5]
runs = int(sys.argv[5]) if len(sys.argv) > 5 else 3
torch.set_num_threads(2)
plain = out + ".diffusers.gguf"
restore_shapes(gguf_file, plain)
t0 = time.time()
m = WanTransformer3DModel.from_single_file(
    plain, quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32), config=cfg_dir,
    torch_dtype=torch.float32).eval()
print(f"load {time.time() - t0:.1f}s", flush=True)
s = load_file(inputs)
times = []
with torch.no_grad():
    for _ in range(runs):
        t1 = time.time()
        y = m(s["x"], s["t"].long(), s["context"], return_dict=False)[0]
        times.append(time.time() - t1)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
print(f"forward median {sorted(times)[len(times) // 2]:.2f}s runs {[round(t, 2) for t in times]} peak RSS {rss:.2f} GB")
if "out_fp32" in s:
    ref = s["out_fp32"]
    print(f"max abs error / max abs value vs PyTorch fp32: {((y - ref).abs().max() / ref.abs().max()).item():.3e}")
save_file({"out": y.float().contiguous()}, out)
