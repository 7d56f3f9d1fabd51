"""Random tiny LoRAs for the wan-tiny-alt fixture in the three key layouts people share, and diffusers' frames
with each applied through `load_lora_weights` + `set_adapters`, for Sorrel's LoRA parity tests.

usage:
  python tools/reference/make_lora_fixtures.py tests/fixtures        # after make_fixtures.py

Writes tests/fixtures/lora/:
  peft.safetensors      diffusers/PEFT keys (transformer.blocks.N.attn1.to_q.lora_A.weight), lora_alpha 8 at
                        rank 4 in the saved lora_adapter_metadata, PEFT lora_bias (lora_B.bias)
  kohya.safetensors     musubi-tuner/kohya keys (lora_unet_blocks_N_self_attn_q.lora_down.weight, .alpha 2)
  original.safetensors  the original Wan names as ComfyUI and lightx2v save them
                        (diffusion_model.blocks.N.self_attn.q.lora_down.weight, .alpha, .diff_b, head.head,
                        text_embedding.0), rank 2
  reference.safetensors frames (1, F, H, W, 3) for each case in CASES, and the base model's

Same pins as make_fixtures.py (diffusers 0.42.1, torch 2.15.0, peft 0.17+).
"""
import argparse
import json
import os

import numpy as np
import torch
from diffusers import WanPipeline
from peft import LoraConfig
from safetensors.torch import load_file, save_file

# (name, [(adapter file, weight)], overrides): what each reference run applies. The last one uses the settings
# people run step-distillation LoRAs (lightx2v, CausVid) with: 4 steps, guidance 1 (one pass per step), flow
# shift 5 (the fixture's own).
CASES = [
    ("peft", [("peft", 1.0)], {}),
    ("kohya", [("kohya", 0.8)], {}),
    ("original", [("original", 1.0)], {}),
    ("peft_and_kohya", [("peft", 0.6), ("kohya", 1.0)], {}),
    ("original_4step_unguided", [("original", 1.0)], {"steps": "4", "guidance_scale": "1.0"}),
]


def rand(shape, g, std):
    return (torch.randn(shape, generator=g) * std).contiguous()


def dims(tr):
    """(in, out) of every linear the LoRAs touch, by diffusers name."""
    out = {}
    for name, mod in tr.named_modules():
        if isinstance(mod, torch.nn.Linear):
            out[name] = (mod.in_features, mod.out_features)
    return out


def make_peft(tr, path, g):
    r, alpha = 4, 8
    targets = ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"]
    sd = {}
    for name, (i, o) in dims(tr).items():
        if not name.startswith("blocks.") or not any(name.endswith(t) for t in targets):
            continue
        sd[f"{name}.lora_A.weight"] = rand((r, i), g, 0.15)
        sd[f"{name}.lora_B.weight"] = rand((o, r), g, 0.15)
        # PEFT's lora_bias puts a bias on every adapted layer.
        sd[f"{name}.lora_B.bias"] = rand((o,), g, 0.05)
    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, lora_bias=True)
    tmp = path + ".dir"
    WanPipeline.save_lora_weights(tmp, transformer_lora_layers=sd, transformer_lora_adapter_metadata=cfg.to_dict())
    os.replace(os.path.join(tmp, "pytorch_lora_weights.safetensors"), path)
    os.rmdir(tmp)


def make_kohya(tr, path, g):
    r, alpha = 4, 2.0
    names = {"attn1.to_q": "self_attn_q", "attn1.to_k": "self_attn_k", "attn1.to_v": "self_attn_v",
             "attn1.to_out.0": "self_attn_o", "attn2.to_q": "cross_attn_q", "attn2.to_k": "cross_attn_k",
             "attn2.to_v": "cross_attn_v", "attn2.to_out.0": "cross_attn_o", "ffn.net.0.proj": "ffn_0",
             "ffn.net.2": "ffn_2"}
    sd = {}
    for name, (i, o) in dims(tr).items():
        parts = name.split(".", 2)
        if parts[0] != "blocks" or parts[2] not in names:
            continue
        key = f"lora_unet_blocks_{parts[1]}_{names[parts[2]]}"
        sd[f"{key}.lora_down.weight"] = rand((r, i), g, 0.15)
        sd[f"{key}.lora_up.weight"] = rand((o, r), g, 0.15)
        sd[f"{key}.alpha"] = torch.tensor(alpha)
    save_file(sd, path)


def make_original(tr, path, g):
    r, alpha = 2, 8.0
    names = {"attn1.to_q": "self_attn.q", "attn1.to_k": "self_attn.k", "attn1.to_v": "self_attn.v",
             "attn1.to_out.0": "self_attn.o", "attn2.to_q": "cross_attn.q", "attn2.to_k": "cross_attn.k",
             "attn2.to_v": "cross_attn.v", "attn2.to_out.0": "cross_attn.o", "ffn.net.0.proj": "ffn.0",
             "ffn.net.2": "ffn.2"}
    sd = {}
    d = dims(tr)
    for name, (i, o) in d.items():
        parts = name.split(".", 2)
        if parts[0] != "blocks" or parts[2] not in names:
            continue
        key = f"diffusion_model.blocks.{parts[1]}.{names[parts[2]]}"
        sd[f"{key}.lora_down.weight"] = rand((r, i), g, 0.15)
        sd[f"{key}.lora_up.weight"] = rand((o, r), g, 0.15)
        sd[f"{key}.alpha"] = torch.tensor(alpha)
        # diffusers reads diff_b as PEFT's lora_bias, which must then be on every adapted layer (lightx2v's
        # LoRAs have it on all).
        sd[f"{key}.diff_b"] = rand((o,), g, 0.05)
    # Outside the blocks diffusers reads these without alphas.
    for ours, theirs in [("proj_out", "head.head"), ("condition_embedder.text_embedder.linear_1", "text_embedding.0")]:
        i, o = d[ours]
        sd[f"diffusion_model.{theirs}.lora_down.weight"] = rand((r, i), g, 0.15)
        sd[f"diffusion_model.{theirs}.lora_up.weight"] = rand((o, r), g, 0.15)
        sd[f"diffusion_model.{theirs}.diff_b"] = rand((o,), g, 0.05)
    save_file(sd, path)


def run(pipe, meta, lat0):
    res = pipe(prompt=meta["prompt"], negative_prompt=meta["negative_prompt"], height=int(meta["height"]),
               width=int(meta["width"]), num_frames=int(meta["num_frames"]), num_inference_steps=int(meta["steps"]),
               guidance_scale=float(meta["guidance_scale"]), max_sequence_length=int(meta["max_sequence_length"]),
               latents=lat0.clone(), output_type="np")
    return torch.from_numpy(np.ascontiguousarray(res.frames)).contiguous()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("fixtures")
    args = ap.parse_args()
    base = os.path.join(args.fixtures, "wan-tiny-alt")
    out = os.path.join(args.fixtures, "lora")
    os.makedirs(out, exist_ok=True)
    from safetensors import safe_open
    with safe_open(os.path.join(base, "reference.safetensors"), "pt") as f:
        meta = f.metadata()
    lat0 = load_file(os.path.join(base, "init_latents.safetensors"))["latents"]

    def load():
        p = WanPipeline.from_pretrained(os.path.join(base, "pipeline"), torch_dtype=torch.float32)
        p.set_progress_bar_config(disable=True)
        return p

    pipe = load()
    g = torch.Generator().manual_seed(11)
    make_peft(pipe.transformer, os.path.join(out, "peft.safetensors"), g)
    make_kohya(pipe.transformer, os.path.join(out, "kohya.safetensors"), g)
    make_original(pipe.transformer, os.path.join(out, "original.safetensors"), g)

    refs = {"frames.base": run(pipe, meta, lat0)}
    for case, adapters, overrides in CASES:
        pipe = load()
        for name, _ in adapters:
            pipe.load_lora_weights(os.path.join(out, f"{name}.safetensors"), adapter_name=name)
        pipe.set_adapters([n for n, _ in adapters], [w for _, w in adapters])
        refs[f"frames.{case}"] = run(pipe, {**meta, **overrides}, lat0)
        err = (refs[f"frames.{case}"] - refs["frames.base"]).abs().max().item()
        print(f"{case}: frames move {err:.3f} from the base model's")
    save_file(refs, os.path.join(out, "reference.safetensors"),
              metadata={"cases": json.dumps(CASES), "torch": torch.__version__})


if __name__ == "__main__":
    main()
