"""The wan-tiny-alt weights as ComfyUI's repackaged single files, and diffusers' frames with exactly the numbers
those files hold, for Sorrel's `--transformer/--text-encoder/--vae FILE` tests.

usage:
  python tools/reference/make_single_file_fixtures.py tests/fixtures      # after make_fixtures.py

Writes tests/fixtures/comfy/:
  transformer.safetensors    fp16, original Wan names under `model.diffusion_model.` (as ComfyUI saves models)
  text_encoder.safetensors   fp8-e4m3 "scaled" as ComfyUI's umt5_xxl_fp8_e4m3fn_scaled: every matrix stored as
                             float8_e4m3fn of W / s with `NAME.scale_weight` = s (max |W| / 448), the `scaled_fp8`
                             marker, embeddings and norms in fp16; transformers' names
  vae.safetensors            the VAE in the original release's names (wan_2.1_vae.safetensors), fp32
  reference.safetensors      `frames`: diffusers' WanPipeline run with the numbers these files decode to

Same pins as make_fixtures.py.
"""
import argparse
import os

import numpy as np
import torch
from diffusers import WanPipeline
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import sys
sys.path.insert(0, os.path.dirname(__file__))
from make_fixtures import transformer_key_to_original  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("fixtures")
    args = ap.parse_args()
    base = os.path.join(args.fixtures, "wan-tiny-alt")
    out = os.path.join(args.fixtures, "comfy")
    os.makedirs(out, exist_ok=True)
    pipe = WanPipeline.from_pretrained(os.path.join(base, "pipeline"), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)

    # Transformer: fp16, original names, ComfyUI's prefix; diffusers then runs the fp16 values in fp32.
    tr = {k: v.detach().clone() for k, v in pipe.transformer.state_dict().items()}
    save_file({f"model.diffusion_model.{transformer_key_to_original(k)}": v.half().contiguous() for k, v in tr.items()},
              os.path.join(out, "transformer.safetensors"))
    pipe.transformer.load_state_dict({k: v.half().float() for k, v in tr.items()})

    # Text encoder: fp8-e4m3 scaled matrices.
    te = {k: v.detach().clone() for k, v in pipe.text_encoder.state_dict().items()}
    stored, decoded = {"scaled_fp8": torch.zeros(2, dtype=torch.float8_e4m3fn)}, {}
    # The token embedding (tied: `shared` and `encoder.embed_tokens` are one tensor) stays fp16, as ComfyUI keeps it.
    embeddings = ("shared.weight", "encoder.embed_tokens.weight")
    for k, v in te.items():
        if v.dim() == 2 and k not in embeddings and "relative_attention_bias" not in k:
            s = v.abs().max() / 448.0
            q = (v / s).to(torch.float8_e4m3fn)
            stored[k] = q.contiguous()
            stored[k[: -len(".weight")] + ".scale_weight"] = s.reshape(1).float()
            decoded[k] = q.float() * s
        else:
            stored[k] = v.half().contiguous()
            decoded[k] = v.half().float()
    if "encoder.embed_tokens.weight" in stored:
        del stored["encoder.embed_tokens.weight"]
    save_file(stored, os.path.join(out, "text_encoder.safetensors"))
    pipe.text_encoder.load_state_dict(decoded, strict=False)

    # VAE: the release's names, from the fixture's own Wan2.1_VAE.pth.
    vae = torch.load(os.path.join(base, "original", "Wan2.1_VAE.pth"), map_location="cpu", weights_only=True)
    save_file({k: v.float().contiguous() for k, v in vae.items()}, os.path.join(out, "vae.safetensors"))

    with safe_open(os.path.join(base, "reference.safetensors"), "pt") as f:
        meta = f.metadata()
    lat0 = load_file(os.path.join(base, "init_latents.safetensors"))["latents"]
    res = pipe(prompt=meta["prompt"], negative_prompt=meta["negative_prompt"], height=int(meta["height"]),
               width=int(meta["width"]), num_frames=int(meta["num_frames"]), num_inference_steps=int(meta["steps"]),
               guidance_scale=float(meta["guidance_scale"]), max_sequence_length=int(meta["max_sequence_length"]),
               latents=lat0.clone(), output_type="np")
    frames = torch.from_numpy(np.ascontiguousarray(res.frames)).contiguous()
    base_frames = load_file(os.path.join(base, "reference.safetensors"))["frames"]
    mse = ((frames - base_frames) ** 2).mean().item()
    print(f"single files: frames {10 * np.log10(1 / max(mse, 1e-20)):.1f} dB from the f32 weights' frames")
    save_file({"frames": frames}, os.path.join(out, "reference.safetensors"), metadata={"torch": torch.__version__})
    for f in sorted(os.listdir(out)):
        print(f, os.path.getsize(os.path.join(out, f)))


if __name__ == "__main__":
    main()
