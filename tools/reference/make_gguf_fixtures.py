"""A tiny Wan2.1 pipeline wide enough to quantize (model width 256: every GGUF block size divides it), its
diffusers frames, and its transformer as GGUF files written the way ComfyUI-GGUF's convert.py writes Wan models,
with gguf-py (llama.cpp's own writer), for Sorrel's GGUF tests.

usage:
  python tools/reference/make_gguf_fixtures.py tests/fixtures          # after make_fixtures.py

Writes tests/fixtures/wan-tiny-wide/:
  pipeline/                 a diffusers folder whose transformer/ holds only config.json: its weights are the
                            GGUF files below (the test loads them with --transformer), which keeps the fixture small
  transformer-F32.gguf      every tensor in F32, original Wan names: the exact case
  transformer-Q8_0.gguf     every matrix in Q8_0; the patch embedding, norms, biases and modulation tables in F32
  transformer-Q4_0.gguf     the same in Q4_0
  init_latents.safetensors  the starting noise
  reference.safetensors     diffusers' frames (1, F, H, W, 3) with the f32 weights (`frames`) and with each
                            quantized file's weights as gguf-py dequantizes them (`frames.Q8_0`, `frames.Q4_0`),
                            with the run's settings in its metadata

GGUF tensors have at most 4 dimensions; as ComfyUI-GGUF does, the 5-D patch embedding is stored flattened and its
shape recorded in the metadata key `comfy.gguf.orig_shape.<name>`. K-quants (Q4_K, Q5_K, Q6_K) cannot be written by
gguf-py; the Rust test quantizes them from transformer-F32.gguf with candle's port of ggml's quantizers.

Pins: as make_fixtures.py, plus gguf==0.19.0.
"""
import argparse
import os
import shutil
import sys

import gguf
import numpy as np
import torch
from diffusers import WanPipeline, WanTransformer3DModel
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from make_fixtures import transformer_key_to_original  # noqa: E402

CONFIG = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=128, in_channels=16, out_channels=16,
              text_dim=32, freq_dim=256, ffn_dim=256, num_layers=1, cross_attn_norm=True,
              qk_norm="rms_norm_across_heads", rope_max_seq_len=64)
H, W, F, STEPS, MSL = 32, 48, 9, 4, 16
PROMPT, NEGATIVE = "a cat and a dog baking a cake", "blurred static"


def write_gguf(path, state, qtype):
    w = gguf.GGUFWriter(path, arch="wan")
    for name, t in state.items():
        a = t.detach().float().numpy()
        if a.ndim > 4:
            w.add_array(f"comfy.gguf.orig_shape.{name}", list(a.shape))
            a = a.reshape(a.shape[0], -1)
        # Matrices whose rows divide into blocks; the patch embedding (a convolution), vectors and tables stay F32.
        quantize = (qtype is not None and t.dim() == 2 and a.shape[1] % gguf.GGML_QUANT_SIZES[qtype][0] == 0)
        if quantize:
            w.add_tensor(name, gguf.quants.quantize(a, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("fixtures")
    args = ap.parse_args()
    out = os.path.join(args.fixtures, "wan-tiny-wide")
    shutil.rmtree(out, ignore_errors=True)
    # The tokenizer, text encoder, VAE and scheduler of wan-tiny-alt; a new, wider transformer.
    pipe = WanPipeline.from_pretrained(os.path.join(args.fixtures, "wan-tiny-alt", "pipeline"),
                                       torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    torch.manual_seed(0)
    tr = WanTransformer3DModel(**CONFIG).eval()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in tr.parameters():
            # Random init leaves the AdaLN tables and the head near zero; perturb so every weight matters.
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    pipe.transformer = tr
    pipe.save_pretrained(os.path.join(out, "pipeline"))
    for f in os.listdir(os.path.join(out, "pipeline", "transformer")):
        if f.endswith(".safetensors"):
            os.remove(os.path.join(out, "pipeline", "transformer", f))

    gen = torch.Generator("cpu").manual_seed(0)
    lat0 = torch.randn((1, 16, (F - 1) // 4 + 1, H // 8, W // 8), generator=gen, dtype=torch.float32)

    def run():
        res = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, height=H, width=W, num_frames=F,
                   num_inference_steps=STEPS, guidance_scale=5.0, max_sequence_length=MSL, latents=lat0.clone(),
                   output_type="np")
        return torch.from_numpy(np.ascontiguousarray(res.frames)).contiguous()

    refs = {"frames": run()}
    # Copies: state_dict() shares storage with the parameters, which are overwritten below.
    state = {transformer_key_to_original(k): v.detach().clone() for k, v in tr.state_dict().items()}
    original = {v: k for k, v in ((k, transformer_key_to_original(k)) for k in tr.state_dict())}
    for name, qtype in [("F32", None), ("Q8_0", gguf.GGMLQuantizationType.Q8_0),
                        ("Q4_0", gguf.GGMLQuantizationType.Q4_0)]:
        path = os.path.join(out, f"transformer-{name}.gguf")
        write_gguf(path, state, qtype)
        if qtype is None:
            continue
        # diffusers with the file's weights as gguf-py dequantizes them: what Sorrel's frames should match.
        reader = gguf.GGUFReader(path)
        deq = {}
        for t in reader.tensors:
            a = gguf.quants.dequantize(t.data, t.tensor_type)
            deq[original[t.name]] = torch.from_numpy(np.array(a, dtype=np.float32))
        sd = tr.state_dict()
        tr.load_state_dict({k: deq[k].reshape(sd[k].shape) for k in sd})
        refs[f"frames.{name}"] = run()
        mse = ((refs[f"frames.{name}"] - refs["frames"]) ** 2).mean().item()
        print(f"{name}: diffusers' frames {10 * np.log10(1 / mse):.1f} dB from its f32 frames")
        tr.load_state_dict({k: v for k, v in zip(sd, [state[transformer_key_to_original(k)] for k in sd])})
    save_file(refs, os.path.join(out, "reference.safetensors"), metadata={
        "prompt": PROMPT, "negative_prompt": NEGATIVE, "height": str(H), "width": str(W), "num_frames": str(F),
        "steps": str(STEPS), "guidance_scale": "5.0", "max_sequence_length": str(MSL),
        "flow_shift": str(pipe.scheduler.config.flow_shift), "torch": torch.__version__})
    save_file({"latents": lat0.contiguous()}, os.path.join(out, "init_latents.safetensors"))

    for f in sorted(os.listdir(out)):
        p = os.path.join(out, f)
        if os.path.isfile(p):
            print(f, os.path.getsize(p))


if __name__ == "__main__":
    main()
