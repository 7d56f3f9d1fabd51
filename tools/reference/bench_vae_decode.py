"""Peak memory and time of diffusers' Wan VAE decode, for the side-by-side row in docs/benchmarks.md.

Decodes a random latent of the given size with the VAE folder given (the full-size Wan2.1 architecture with
random weights, made by `--make`), in fp32 (or `--dtype bf16`: weights and activations in bf16, as
`from_pretrained(..., torch_dtype=torch.bfloat16)` runs) on the CPU, and prints the peak RSS before and after the
decode.

    python bench_vae_decode.py --make /tmp/fullvae/vae            # AutoencoderKLWan() defaults, seed 0
    python bench_vae_decode.py /tmp/fullvae/vae --latent 1,16,2,32,32 --save vin.safetensors vout.safetensors
    target/release/examples/vae_decode_bench /tmp/fullvae/vae vin.safetensors vout.safetensors 1

`--save` writes the latent (`z`) and diffusers' video (`out`) for Sorrel's `vae_decode_bench` example, which
decodes the same latent and reports the difference.
"""

import argparse
import resource
import time

import torch
from diffusers import AutoencoderKLWan
from safetensors.torch import save_file


def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("vae")
    ap.add_argument("--make", action="store_true", help="write a random full-size VAE to the folder")
    ap.add_argument("--latent", default="1,16,1,60,104", help="B,C,T,H,W of the latent to decode")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--tiling", action="store_true", help="enable_tiling() with its defaults (256 every 192)")
    ap.add_argument("--save", nargs=2, metavar=("INPUTS", "OUTPUT"), help="write z and diffusers' video")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.make:
        torch.manual_seed(0)
        AutoencoderKLWan().save_pretrained(args.vae)
        return
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    vae = AutoencoderKLWan.from_pretrained(args.vae, torch_dtype=dtype).eval()
    if args.tiling:
        vae.enable_tiling()
    shape = tuple(int(v) for v in args.latent.split(","))
    z = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    loaded = peak_mb()
    with torch.no_grad():
        t0 = time.perf_counter()
        out = vae.decode(z.to(dtype)).sample.float()
        took = time.perf_counter() - t0
    if args.save:
        save_file({"z": z.contiguous()}, args.save[0])
        save_file({"out": out.contiguous()}, args.save[1])
    print(
        f"{args.dtype}{' tiled' if args.tiling else ''} latent {shape} -> video {tuple(out.shape)}: decode {took:.2f} s, "
        f"peak RSS {peak_mb():.0f} MB (after loading {loaded:.0f} MB)"
    )


if __name__ == "__main__":
    main()
