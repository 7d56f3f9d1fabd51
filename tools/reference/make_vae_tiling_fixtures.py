"""diffusers' tiled VAE decode (`AutoencoderKLWan.enable_tiling`), for the tiling parity tests of Sorrel's
`AutoencoderKLWan::decode_tiled` (`crates/sorrel-models/tests/wan_vae.rs`, `wan22_vae.rs`).

Run after `make_fixtures.py` and `make_wan22_fixtures.py`. For the tiny Wan2.1 VAE of `wan-tiny-alt` (8x spatial)
and the Wan2.2 one of `wan22-tiny-ti2v` (16x, 2x2 patches) it decodes a seeded random latent larger than one tile
in fp32 with small, non-square tiles (so a latent a few pixels wide crosses several tiles, rows and columns), and
writes `vae_tiled.safetensors`: `z`, the tiled decode `tiled` and the untiled one `whole`; the tile and stride sizes
are in the metadata.

    venv/bin/python tools/reference/make_vae_tiling_fixtures.py tests/fixtures
"""

import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan
from safetensors.torch import save_file

CASES = {
    # name: (latent frames, latent height, latent width, tile (h, w), stride (h, w)) in output pixels
    "wan-tiny-alt": (3, 10, 14, (32, 40), (24, 32)),
    "wan22-tiny-ti2v": (2, 7, 9, (64, 48), (48, 32)),
}


def main():
    root = Path(sys.argv[1])
    torch.set_num_threads(2)
    for name, (t, h, w, tile, stride) in CASES.items():
        vae = AutoencoderKLWan.from_pretrained(root / name / "pipeline" / "vae").eval()
        z = torch.randn(1, vae.config.z_dim, t, h, w, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            whole = vae.decode(z, return_dict=False)[0]
            vae.enable_tiling(
                tile_sample_min_height=tile[0],
                tile_sample_min_width=tile[1],
                tile_sample_stride_height=stride[0],
                tile_sample_stride_width=stride[1],
            )
            tiled = vae.decode(z, return_dict=False)[0]
        seams = (tiled - whole).abs().max().item()
        print(f"{name}: video {tuple(tiled.shape)}, tiled differs from whole by up to {seams:.3e}")
        meta = {"tile": f"{tile[0]},{tile[1]}", "stride": f"{stride[0]},{stride[1]}"}
        save_file(
            {"z": z.contiguous(), "tiled": tiled.contiguous(), "whole": whole.contiguous()},
            root / name / "vae_tiled.safetensors",
            metadata=meta,
        )


if __name__ == "__main__":
    main()
