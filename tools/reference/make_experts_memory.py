"""Folders for measuring what Wan2.2 A14B's two experts cost in memory, at a size where it shows (never committed).

usage:
  python tools/reference/make_experts_memory.py OUT          # after the fixtures exist (reuses wan22-tiny-a14b)

Writes, from tests/fixtures/wan22-tiny-a14b/pipeline (its tiny text encoder, tokenizer, VAE, scheduler):
  OUT/two/   model_index.json with boundary_ratio 0.875, transformer/ and transformer_2/: two different random
             transformers of Wan2.1-1.3B's width and depth (dim 1536, 30 layers, ffn 8960; text_dim 32 to take
             the tiny text encoder), bf16, 2.8 GB each
  OUT/one/   the same with transformer/ only and no boundary_ratio: one expert, the baseline

`sorrel generate` on both (tools/reference/README.md has the commands) gives the peak RSS of a run that switches
experts against a run that never does: equal peaks mean the expert not in use holds no memory.
"""
import json
import os
import shutil
import sys

import torch
from diffusers import WanTransformer3DModel

HERE = os.path.dirname(os.path.abspath(__file__))
TINY = os.path.join(HERE, "..", "..", "tests", "fixtures", "wan22-tiny-a14b", "pipeline")
CFG = dict(added_kv_proj_dim=None, attention_head_dim=128, cross_attn_norm=True, eps=1e-06, ffn_dim=8960,
           freq_dim=256, in_channels=16, num_attention_heads=12, num_layers=30, out_channels=16,
           patch_size=[1, 2, 2], qk_norm="rms_norm_across_heads", text_dim=32)


def expert(path, seed):
    torch.manual_seed(seed)
    m = WanTransformer3DModel(**CFG).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    m.to(torch.bfloat16).save_pretrained(path, safe_serialization=True, max_shard_size="20GB")


def main():
    out = os.path.abspath(sys.argv[1])
    for name in ("two", "one"):
        d = os.path.join(out, name)
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(TINY, d, ignore=shutil.ignore_patterns("transformer", "transformer_2"))
    expert(os.path.join(out, "two", "transformer"), 1)
    expert(os.path.join(out, "two", "transformer_2"), 2)
    shutil.copytree(os.path.join(out, "two", "transformer"), os.path.join(out, "one", "transformer"))
    index_path = os.path.join(out, "one", "model_index.json")
    with open(index_path) as f:
        index = json.load(f)
    index.pop("transformer_2")
    index.pop("boundary_ratio")
    with open(index_path, "w") as f:
        json.dump(index, f, indent=2)
    print(f"wrote {out}/two (two experts) and {out}/one (one)")


if __name__ == "__main__":
    main()
