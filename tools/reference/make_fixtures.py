"""Build tiny random-weight Wan2.1 text-to-video pipelines with diffusers, run them, and save the weights plus
per-stage reference tensors that Sorrel's parity tests compare against.

usage:
  python tools/reference/make_fixtures.py tests/fixtures            # the committed fixtures
  python tools/reference/make_fixtures.py OUT --full-size            # + random Wan2.1-T2V-1.3B transformer (not committed)

Pinned: diffusers 0.42.1, transformers 5.24.0, torch 2.15.0 (see tools/reference/requirements.txt). The UniPC
flow-sigma formula changed in diffusers 0.37, so other versions produce other fixtures.

Each fixture folder holds:
  pipeline/                  a diffusers folder (model_index.json + subfolders), as Wan-AI/*-Diffusers ship
  original/                  (unipc only) the same weights in the original Wan2.1 release layout: transformer
                             safetensors with original key names + config.json, Wan2.1_VAE.pth and
                             models_t5_umt5-xxl-enc-bf16.pth torch pickles, google/umt5-xxl tokenizer
  init_latents.safetensors   tensor `latents`, the starting noise (torch's RNG is not reproduced in Rust)
  reference.safetensors      per-stage outputs (keys listed in `save_reference`)
"""
import argparse
import json
import os
import shutil
import time

import numpy as np
import sentencepiece as spm
import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel
from diffusers import (AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler, WanPipeline,
                       WanTransformer3DModel)

WORDS = ("a cat and a dog baking a cake together in a kitchen the cat is carefully measuring flour while the dog "
         "is stirring the batter with a wooden spoon dance monkey negative bright tones overexposed static blurred "
         "details subtitles style works paintings images overall gray worst quality low jpeg compression residue "
         "ugly incomplete extra fingers poorly drawn hands faces deformed disfigured misshapen limbs fused still "
         "picture messy background three legs many people walking backwards sunlight streaming through window").split()


def make_tokenizer(workdir):
    """A sentencepiece Unigram with UMT5's id layout (pad 0, eos 1, unk 2, no BOS, nmt_nfkc): the real
    google/umt5-xxl tokenizer cannot be downloaded here, and this one exercises the same code paths."""
    os.makedirs(workdir, exist_ok=True)
    corpus = os.path.join(workdir, "corpus.txt")
    rng = np.random.RandomState(0)
    with open(corpus, "w") as f:
        for _ in range(2000):
            f.write(" ".join(rng.choice(WORDS, size=rng.randint(3, 12))) + "\n")
    spm.SentencePieceTrainer.train(input=corpus, model_prefix=os.path.join(workdir, "spiece"), vocab_size=96,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   character_coverage=1.0, normalization_rule_name="nmt_nfkc", minloglevel=2)
    with open(os.path.join(workdir, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "T5Tokenizer", "extra_ids": 0, "model_max_length": 512,
                   "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}, f)
    return AutoTokenizer.from_pretrained(workdir)


# name, transformer kwargs, vae kwargs, scheduler, (height, width, frames), prompt, negative, steps, max_seq_len
FIXTURES = {
    "wan-tiny-unipc": dict(
        transformer=dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
                         out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
                         qk_norm="rms_norm_across_heads", rope_max_seq_len=32),
        vae=dict(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]),
        scheduler=("unipc", 3.0), size=(32, 32, 9), prompt="dance monkey", negative="negative", steps=4, msl=16,
        original=True),
    "wan-tiny-euler": dict(
        transformer=dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
                         out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
                         qk_norm="rms_norm_across_heads", rope_max_seq_len=32),
        vae=dict(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]),
        scheduler=("euler", 7.0), size=(32, 32, 9), prompt="dance monkey", negative="negative", steps=4, msl=16,
        original=False),
    # Everything different from the two above: non-square size, 13 frames, 3 heads of 16, 3 layers, flow_shift 5,
    # a VAE with channel changes (shortcut convs) and two resnets per block, 5 steps, longer sequence.
    "wan-tiny-alt": dict(
        transformer=dict(patch_size=(1, 2, 2), num_attention_heads=3, attention_head_dim=16, in_channels=16,
                         out_channels=16, text_dim=32, freq_dim=64, ffn_dim=40, num_layers=3, cross_attn_norm=True,
                         qk_norm="rms_norm_across_heads", rope_max_seq_len=64),
        vae=dict(base_dim=4, z_dim=16, dim_mult=[1, 2, 2, 1], num_res_blocks=2, temperal_downsample=[False, True, True]),
        scheduler=("unipc", 5.0), size=(32, 48, 13), prompt="a cat and a dog baking a cake",
        negative="blurred static", steps=5, msl=24, original=True),
}


def build(spec, tokenizer):
    torch.manual_seed(0)
    te_cfg = UMT5Config(vocab_size=128, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2, num_decoder_layers=0,
                        relative_attention_num_buckets=32, relative_attention_max_distance=128,
                        feed_forward_proj="gated-gelu", dropout_rate=0.0, layer_norm_epsilon=1e-6,
                        tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    text_encoder = UMT5EncoderModel(te_cfg).eval()
    torch.manual_seed(0)
    vae = AutoencoderKLWan(**spec["vae"]).eval()
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(**spec["transformer"]).eval()
    # Random init leaves the AdaLN tables and output head near zero; perturb every parameter so each one matters
    # to the output and a wrong mapping cannot hide.
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in list(transformer.parameters()) + list(vae.parameters()):
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    kind, shift = spec["scheduler"]
    if kind == "unipc":  # what Wan-AI/*-Diffusers ship
        scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                            num_train_timesteps=1000, flow_shift=shift)
    else:  # what diffusers' own Wan tests use
        scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                       transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, spec, out):
    tokenizer, text_encoder, transformer, vae = pipe.tokenizer, pipe.text_encoder, pipe.transformer, pipe.vae
    refs, calls = {}, []
    hook = transformer.register_forward_hook(lambda m, a, kw, o: calls.append(o[0].detach().clone()), with_kwargs=True)

    def on_step(p, i, t, kw):
        refs[f"step{i}.latents_after"] = kw["latents"].detach().clone()
        refs[f"step{i}.timestep"] = t.detach().reshape(1).float().clone()
        return {}

    H, W, F = spec["size"]
    L, steps = spec["msl"], spec["steps"]
    prompt, negative = spec["prompt"], spec["negative"]
    enc = tokenizer([prompt, negative], padding="max_length", max_length=L, truncation=True,
                    add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    refs["tok.input_ids"] = enc.input_ids.to(torch.int64)
    refs["tok.attention_mask"] = enc.attention_mask.to(torch.int64)
    with torch.no_grad():
        refs["text_encoder.hidden"] = text_encoder(enc.input_ids, enc.attention_mask).last_hidden_state
    pe, ne = pipe.encode_prompt(prompt, negative, True, 1, max_sequence_length=L, device="cpu")
    refs["prompt_embeds"], refs["negative_prompt_embeds"] = pe, ne
    gen = torch.Generator("cpu").manual_seed(0)
    lat0 = torch.randn((1, 16, (F - 1) // 4 + 1, H // 8, W // 8), generator=gen, dtype=torch.float32)
    refs["latents_init"] = lat0.clone()
    t0 = time.time()
    res = pipe(prompt=prompt, negative_prompt=negative, height=H, width=W, num_frames=F, num_inference_steps=steps,
               guidance_scale=5.0, max_sequence_length=L, latents=lat0.clone(), output_type="np",
               callback_on_step_end=on_step, callback_on_step_end_tensor_inputs=["latents"])
    hook.remove()
    for i in range(steps):
        refs[f"step{i}.noise_pred_cond"], refs[f"step{i}.noise_pred_uncond"] = calls[2 * i], calls[2 * i + 1]
    refs["scheduler.timesteps"] = pipe.scheduler.timesteps.float().clone()
    refs["scheduler.sigmas"] = pipe.scheduler.sigmas.float().clone()
    final = refs[f"step{steps - 1}.latents_after"]
    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1)
    with torch.no_grad():
        # the pipeline's own arithmetic: latents / (1/std) + mean
        refs["vae.decoded"] = vae.decode(final / (1.0 / std) + mean, return_dict=False)[0]
    refs["frames"] = torch.from_numpy(np.ascontiguousarray(res.frames))  # (1, F, H, W, 3) in [0, 1]
    with torch.no_grad():
        x = torch.randn(1, 16, 3, H // 8, W // 8, generator=torch.Generator().manual_seed(1))
        refs["unit.transformer.in"] = x
        refs["unit.transformer.t"] = torch.tensor([999.0])
        refs["unit.transformer.out"] = transformer(x, torch.tensor([999]), pe, return_dict=False)[0]
        img = torch.rand(1, 3, F, H, W, generator=torch.Generator().manual_seed(2)) * 2 - 1
        refs["unit.vae.encode.in"] = img
        dist = vae.encode(img).latent_dist
        refs["unit.vae.encode.mean"], refs["unit.vae.encode.logvar"] = dist.mean, dist.logvar
    refs = {k: v.contiguous() for k, v in refs.items()}
    save_file(refs, os.path.join(out, "reference.safetensors"), metadata={
        "prompt": prompt, "negative_prompt": negative, "height": str(H), "width": str(W), "num_frames": str(F),
        "steps": str(steps), "guidance_scale": "5.0", "max_sequence_length": str(L),
        "scheduler": spec["scheduler"][0], "flow_shift": str(spec["scheduler"][1]), "torch": torch.__version__})
    save_file({"latents": lat0.contiguous()}, os.path.join(out, "init_latents.safetensors"))
    return time.time() - t0


# ------------------------------------------------------------------ original Wan2.1 release layout
# The inverse of diffusers' scripts/convert_wan_to_diffusers.py, written from its mapping; Sorrel's Rust loader
# maps these names forward again, and the parity test checks both layouts give identical outputs.
TRANSFORMER_TO_ORIGINAL = [
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("attn1.to_out.0", "self_attn.o"), ("attn2.to_out.0", "cross_attn.o"),
    ("attn1.to_", "self_attn."), ("attn2.to_", "cross_attn."),
    ("attn1.norm_", "self_attn.norm_"), ("attn2.norm_", "cross_attn.norm_"),
    ("ffn.net.0.proj", "ffn.0"), ("ffn.net.2", "ffn.2"),
    (".norm2.", ".norm3."),
    ("proj_out", "head.head"),
]


def transformer_key_to_original(k):
    if k == "scale_shift_table":
        return "head.modulation"
    k = k.replace("scale_shift_table", "modulation")
    for a, b in TRANSFORMER_TO_ORIGINAL:
        k = k.replace(a, b)
    return k


RESNET_TO_ORIGINAL = {"norm1.gamma": "residual.0.gamma", "conv1.weight": "residual.2.weight",
                      "conv1.bias": "residual.2.bias", "norm2.gamma": "residual.3.gamma",
                      "conv2.weight": "residual.6.weight", "conv2.bias": "residual.6.bias",
                      "conv_shortcut.weight": "shortcut.weight", "conv_shortcut.bias": "shortcut.bias"}


def vae_key_to_original(k, cfg):
    top = {"quant_conv": "conv1", "post_quant_conv": "conv2"}
    head, rest = k.split(".", 1)
    if head in top:
        return f"{top[head]}.{rest}"
    p = f"{head}."  # encoder. | decoder.
    if rest.startswith("conv_in."):
        return p + "conv1." + rest[len("conv_in."):]
    if rest.startswith("norm_out."):
        return p + "head.0." + rest[len("norm_out."):]
    if rest.startswith("conv_out."):
        return p + "head.2." + rest[len("conv_out."):]
    if rest.startswith("mid_block."):
        r = rest[len("mid_block."):]
        if r.startswith("resnets.0."):
            return p + "middle.0." + RESNET_TO_ORIGINAL[r[len("resnets.0."):]]
        if r.startswith("resnets.1."):
            return p + "middle.2." + RESNET_TO_ORIGINAL[r[len("resnets.1."):]]
        return p + "middle.1." + r[len("attentions.0."):]
    if rest.startswith("down_blocks."):
        _, idx, r = rest.split(".", 2)
        return p + f"downsamples.{idx}." + RESNET_TO_ORIGINAL.get(r, r)
    if rest.startswith("up_blocks."):
        _, bi, kind, j, r = rest.split(".", 4)
        bi, j = int(bi), int(j)
        per = cfg["num_res_blocks"] + 1
        n = len(cfg["dim_mult"])
        start = sum(per + (1 if b != n - 1 else 0) for b in range(bi))
        if kind == "resnets":
            return p + f"upsamples.{start + j}." + RESNET_TO_ORIGINAL[r]
        return p + f"upsamples.{start + per}." + r
    raise KeyError(k)


def t5_key_to_original(k):
    if k in ("shared.weight", "encoder.embed_tokens.weight"):
        return "token_embedding.weight"
    if k == "encoder.final_layer_norm.weight":
        return "norm.weight"
    parts = k.split(".")  # encoder.block.N.layer.L....
    n, layer, rest = parts[2], parts[4], ".".join(parts[5:])
    m = {"0": {"layer_norm.weight": "norm1.weight", "SelfAttention.q.weight": "attn.q.weight",
               "SelfAttention.k.weight": "attn.k.weight", "SelfAttention.v.weight": "attn.v.weight",
               "SelfAttention.o.weight": "attn.o.weight",
               "SelfAttention.relative_attention_bias.weight": "pos_embedding.embedding.weight"},
         "1": {"layer_norm.weight": "norm2.weight", "DenseReluDense.wi_0.weight": "ffn.gate.0.weight",
               "DenseReluDense.wi_1.weight": "ffn.fc1.weight", "DenseReluDense.wo.weight": "ffn.fc2.weight"}}
    return f"blocks.{n}.{m[layer][rest]}"


def save_original(pipe, spec, out, tokdir):
    """Write the pipeline's weights as the original Wan2.1 release lays them out."""
    os.makedirs(out, exist_ok=True)
    tsd = {transformer_key_to_original(k): v.contiguous() for k, v in pipe.transformer.state_dict().items()}
    save_file(tsd, os.path.join(out, "diffusion_pytorch_model.safetensors"))
    t = spec["transformer"]
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump({"_class_name": "WanModel", "model_type": "t2v", "dim": t["num_attention_heads"] * t["attention_head_dim"],
                   "eps": 1e-6, "ffn_dim": t["ffn_dim"], "freq_dim": t["freq_dim"], "in_dim": t["in_channels"],
                   "num_heads": t["num_attention_heads"], "num_layers": t["num_layers"], "out_dim": t["out_channels"],
                   "text_len": 512, "text_dim": t["text_dim"], "patch_size": list(t["patch_size"])}, f, indent=2)
    vsd = {vae_key_to_original(k, spec["vae"]): v.contiguous() for k, v in pipe.vae.state_dict().items()}
    torch.save(vsd, os.path.join(out, "Wan2.1_VAE.pth"))
    esd = {}
    for k, v in pipe.text_encoder.state_dict().items():
        esd[t5_key_to_original(k)] = v.contiguous()
    # kept in fp32 despite the release's file name, so the test can demand identical outputs
    torch.save(esd, os.path.join(out, "models_t5_umt5-xxl-enc-bf16.pth"))
    tok_out = os.path.join(out, "google", "umt5-xxl")
    os.makedirs(tok_out, exist_ok=True)
    pipe.tokenizer.save_pretrained(tok_out)
    # The original VAE/T5 configs are not in the release (they are hard-coded in Wan's code); ours are tiny,
    # so say what they are in a sidecar the Rust loader reads when present.
    with open(os.path.join(out, "sorrel_original_configs.json"), "w") as f:
        json.dump({"vae": {k: v for k, v in pipe.vae.config.items() if not k.startswith("_")},
                   "text_encoder": pipe.text_encoder.config.to_dict()}, f, indent=1, default=list)


def full_size_transformer(out):
    """A random-weight Wan2.1-T2V-1.3B transformer in diffusers layout (5.7 GB fp32; never committed)."""
    cfg = dict(added_kv_proj_dim=None, attention_head_dim=128, cross_attn_norm=True, eps=1e-06, ffn_dim=8960,
               freq_dim=256, in_channels=16, num_attention_heads=12, num_layers=30, out_channels=16,
               patch_size=[1, 2, 2], qk_norm="rms_norm_across_heads", text_dim=4096)
    torch.manual_seed(0)
    m = WanTransformer3DModel(**cfg).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    m.save_pretrained(os.path.join(out, "wan2.1-t2v-1.3b-random", "transformer"), safe_serialization=True,
                      max_shard_size="20GB")
    print("full-size transformer written")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--full-size", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    work = os.path.abspath(os.path.join(args.out, "_work_tokenizer"))
    tokenizer = make_tokenizer(work)
    for name, spec in FIXTURES.items():
        if args.only and name not in args.only:
            continue
        out = os.path.abspath(os.path.join(args.out, name))
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        pipe = build(spec, tokenizer)
        secs = run(pipe, spec, out)
        pipe.save_pretrained(os.path.join(out, "pipeline"), safe_serialization=True)
        if spec["original"]:
            save_original(pipe, spec, os.path.join(out, "original"), work)
        print(f"{name}: pipeline {secs:.2f}s, timesteps {pipe.scheduler.timesteps.tolist()}")
    shutil.rmtree(work, ignore_errors=True)
    if args.full_size:
        full_size_transformer(os.path.abspath(os.path.join(args.out, "big")))


if __name__ == "__main__":
    main()
