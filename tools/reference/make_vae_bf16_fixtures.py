"""diffusers' Wan VAEs in bf16, for the bf16 parity tests of Sorrel's VAE (`crates/sorrel-models/tests/wan_vae.rs`,
`wan22_vae.rs`).

Run after `make_fixtures.py` and `make_wan22_fixtures.py`. For two tiny Wan2.1 fixtures and the Wan2.2 one it loads
`pipeline/vae` with its weights and activations in bf16 (as `from_pretrained(..., torch_dtype=torch.bfloat16)`
runs) and repeats the fp32 reference's decode and encode on the same inputs, writing `vae_bf16.safetensors`:
`vae.decoded.bf16` and `vae.encode.mean.bf16` (as fp32 values). PyTorch's and Sorrel's bf16 runs round in
different places, so the tests hold Sorrel's bf16 results to the fp32 reference at most as far as diffusers' own
bf16 results are from it, with a margin.

    venv/bin/python tools/reference/make_vae_bf16_fixtures.py tests/fixtures
"""

import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan
from safetensors.torch import load_file, save_file


def main():
    root = Path(sys.argv[1])
    torch.set_num_threads(2)
    for name in ["wan-tiny-unipc", "wan-tiny-alt", "wan22-tiny-ti2v"]:
        fx = root / name
        refs = load_file(fx / "reference.safetensors")
        vae = AutoencoderKLWan.from_pretrained(fx / "pipeline" / "vae").eval()
        if name.startswith("wan22"):
            # The Wan2.2 fixture decodes its encoded clip's mean and encodes the clip (u8 frames).
            z = refs["vae.mean"]
            clip = refs["vae.video"].float().permute(3, 0, 1, 2).unsqueeze(0) / 127.5 - 1.0
            keys = ("vae.decoded", "vae.mean")
        else:
            steps = max(int(k[4:].split(".")[0]) for k in refs if k.startswith("step") and k.endswith(".latents_after"))
            cfg = vae.config
            mean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1)
            std = torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1)
            z = refs[f"step{steps}.latents_after"] / (1.0 / std) + mean
            clip = refs["unit.vae.encode.in"]
            keys = ("vae.decoded", "unit.vae.encode.mean")
        with torch.no_grad():
            vae = vae.to(torch.bfloat16)
            decoded = vae.decode(z.to(torch.bfloat16), return_dict=False)[0].float()
            encoded = vae.encode(clip.to(torch.bfloat16)).latent_dist.mean.float()
        for what, got, key in [("decode", decoded, keys[0]), ("encode", encoded, keys[1])]:
            err = (got - refs[key]).abs().max().item()
            print(f"{name}: bf16 {what} {err:.3e} from the fp32 reference")
        save_file(
            {"vae.decoded.bf16": decoded.contiguous(), "vae.encode.mean.bf16": encoded.contiguous()},
            fx / "vae_bf16.safetensors",
        )


if __name__ == "__main__":
    main()
