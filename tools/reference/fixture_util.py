"""What the Wan2.2 and SkyReels-V2 fixture scripts share: test pictures, perturbed random weights, wan-tiny-alt's
parts, and the reference file format (tensors plus string metadata)."""
import argparse
import os
import sys
import types

import numpy as np
import torch
from safetensors.torch import save_file
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from transformers import AutoTokenizer, UMT5EncoderModel


def stub_ftfy(*modules):
    """diffusers' Wan and SkyReels pipelines call `ftfy.fix_text` without importing it when it is missing; our
    prompts are ASCII, on which it is the identity."""
    for m in modules:
        m.ftfy = types.SimpleNamespace(fix_text=lambda s: s)


def picture(seed, h, w, shapes=4, max_radius=14):
    """A smooth picture with a few hard-edged shapes (u8, h x w x 3), so the VAE has structure to keep."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([x / w, y / h, 0.5 + 0.5 * np.sin((x + y) / 7.0 + seed)], -1)
    for _ in range(shapes):
        cy, cx, r = rng.randint(0, h), rng.randint(0, w), rng.randint(4, max_radius)
        img[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = rng.rand(3)
    return (img * 255).round().clip(0, 255).astype(np.uint8)


def moving_video(seed, f, h, w):
    """f frames of a picture sliding right one pixel a frame (u8, f x h x w x 3)."""
    base = picture(seed, h, w + f)
    return np.stack([base[:, f - i:f - i + w] for i in range(f)])


def perturb(*modules, seed=3):
    """Random init leaves norms at 1/0 and some tables at zero; perturb every parameter so each one matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in modules:
            for p in m.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.05)


def load_alt(root):
    """wan-tiny-alt's tokenizer, text encoder and VAE, and its transformer's config (without `_` keys)."""
    p = os.path.join(root, "wan-tiny-alt", "pipeline")
    tok = AutoTokenizer.from_pretrained(os.path.join(p, "tokenizer"))
    te = UMT5EncoderModel.from_pretrained(os.path.join(p, "text_encoder")).eval()
    vae = AutoencoderKLWan.from_pretrained(os.path.join(p, "vae")).eval()
    cfg = dict(WanTransformer3DModel.load_config(os.path.join(p, "transformer")))
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    return tok, te, vae, cfg


def save(out, refs, meta):
    """reference.safetensors in `out`: the tensors, and the settings as string metadata with torch's version."""
    os.makedirs(out, exist_ok=True)
    refs = {k: v.contiguous() for k, v in refs.items()}
    meta = {k: str(v) for k, v in meta.items()}
    meta["torch"] = torch.__version__
    save_file(refs, os.path.join(out, "reference.safetensors"), metadata=meta)


def run_jobs(jobs):
    """The fixture scripts' command line: `SCRIPT OUT [--only NAME ...]`, after make_fixtures.py (every script reuses
    wan-tiny-alt). `jobs(root)` gives {fixture name: function writing it}."""
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--only", nargs="*", default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    root = os.path.abspath(args.out)
    if not os.path.isdir(os.path.join(root, "wan-tiny-alt", "pipeline")):
        sys.exit(f"{root}/wan-tiny-alt/pipeline is missing: run make_fixtures.py first")
    for name, job in jobs(root).items():
        if args.only is None or name in args.only:
            job()
