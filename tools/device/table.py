"""The GPU check's tables (markdown) from what `tools/device/check.sh` wrote to OUT_DIR.

usage: python tools/device/table.py OUT_DIR
"""
import json
import os
import sys

out = sys.argv[1]
lines = lambda name: [json.loads(l) for l in open(os.path.join(out, name)) if l.strip()]
gpu = open(os.path.join(out, "gpu.txt")).read().strip()
print(f"GPU: {gpu}\n")
print("| fixture | dtype | GPU from CPU | GPU from diffusers | CPU from diffusers | bound | holds |")
print("|---|---|---|---|---|---|---|")
for r in lines("parity.jsonl"):
    bound = f"{r['bound']:.0e}" if r["bound"] else "reported"
    print(f"| {r['fixture']} | {r['dtype']} | {r['max_abs_from_cpu']:.2e} | {r['max_abs_from_diffusers']:.2e} "
          f"| {r['cpu_from_diffusers']:.2e} | {bound} | {'yes' if r['ok'] else 'no'} |")
runs, peaks = {}, {}
last = None
for r in lines("bench.jsonl"):
    if "program" in r:
        last = r["program"]
        runs[last] = r
    elif "peak_gpu_mib" in r and last:
        peaks[last] = r["peak_gpu_mib"] - r["before_mib"]
d, s = runs.get("diffusers"), runs.get("sorrel")
if d and s:
    n = len(s["step_seconds"])
    print(f"\nTransformer steps over {s['tokens']} tokens (Wan2.1-T2V-1.3B at 832x480, 81 frames: 32,760), "
          f"{s['dtype']}, guidance (two forwards a step), median of {n} steps after one unmeasured:\n")
    print("| | diffusers | Sorrel | Sorrel / diffusers |")
    print("|---|---|---|---|")
    ds, ss = d["median_step_seconds"], s["median_step_seconds"]
    print(f"| seconds per step | {ds:.3f} | {ss:.3f} | {ss / ds:.2f}x |")
    if "diffusers" in peaks and "sorrel" in peaks:
        dp, sp = peaks["diffusers"], peaks["sorrel"]
        ratio = f"{sp / dp:.2f}x" if dp > 0 else "-"
        print(f"| peak GPU memory above idle (nvidia-smi) | {dp / 1024:.1f} GiB | {sp / 1024:.1f} GiB | {ratio} |")
    print(f"| load seconds | {d['load_seconds']:.1f} | {s['load_seconds']:.1f} | |")
    err = s.get("relative_max_abs_from_diffusers")
    if err is not None:
        print(f"\nSorrel's first step against diffusers' (max abs / max abs value): {err:.2e}")
    print(f"\ntorch peak allocated {d['torch_peak_allocated_bytes'] / 2**30:.1f} GiB, reserved "
          f"{d['torch_peak_reserved_bytes'] / 2**30:.1f} GiB; versions {d['versions']}")
