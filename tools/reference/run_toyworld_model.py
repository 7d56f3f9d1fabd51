"""Run Sorrel's embedded toy-world model (a diffusers-layout Wan folder written by `sorrel train`) with
diffusers' own WanPipeline, for the parity test and the side-by-side generation benchmark.

usage: python tools/reference/run_toyworld_model.py MODEL_DIR OUT.safetensors [RUNS]

Draws the starting noise from torch's seeded generator, generates one clip for the fixed prompt and saves
`latents` (the noise), `token_ids`, `prompt_embeds`, `frames` (F,H,W,3 in [0,1]) with the prompt and settings
as metadata. Prints the median generation time over RUNS runs (default 3) and the peak RSS.
`crates/sorrel-cli/tests/embedded.rs` compares Sorrel's frames from the same noise with `frames`.
"""
import json
import os
import resource
import statistics
import sys
import time

import torch
from diffusers import WanPipeline
from safetensors.torch import save_file

PROMPT = "two small red balls bounce on a blue floor"

src, out = sys.argv[1], sys.argv[2]
runs = int(sys.argv[3]) if len(sys.argv) > 3 else 3
torch.set_num_threads(2)
d = json.load(open(os.path.join(src, "sorrel_defaults.json")))
pipe = WanPipeline.from_pretrained(src, torch_dtype=torch.float32)
z = pipe.vae.config.z_dim
s = 2 ** len(pipe.vae.config.temperal_downsample)
g = torch.Generator().manual_seed(0)
latents = torch.randn(1, z, d["frames"], d["height"] // s, d["width"] // s, generator=g)
tok = pipe.tokenizer([PROMPT], padding="max_length", max_length=d["max_sequence_length"],
                     truncation=True, add_special_tokens=True, return_tensors="pt")
times = []
for _ in range(runs):
    t0 = time.time()
    with torch.no_grad():
        # num_frames only shapes new noise; with `latents` given the clip has their frame count.
        frames = pipe(PROMPT, negative_prompt="", height=d["height"], width=d["width"], num_frames=d["frames"],
                      num_inference_steps=d["steps"], guidance_scale=d["guidance"], latents=latents.clone(),
                      max_sequence_length=d["max_sequence_length"], output_type="np").frames[0]
    times.append(time.time() - t0)
emb, _ = pipe.encode_prompt(PROMPT, negative_prompt="", do_classifier_free_guidance=False,
                            max_sequence_length=d["max_sequence_length"])
save_file({"latents": latents.contiguous(), "token_ids": tok.input_ids.to(torch.int64).contiguous(),
           "prompt_embeds": emb.contiguous(), "frames": torch.from_numpy(frames).float().contiguous()},
          out, metadata={"prompt": PROMPT, "steps": str(d["steps"]), "guidance": str(d["guidance"])})
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
print(f"diffusers: {runs} runs, median {statistics.median(times):.3f} s per clip, peak RSS {rss:.0f} MB")
