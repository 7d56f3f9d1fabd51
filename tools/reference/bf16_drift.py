"""How far diffusers' own bf16 run of a mode fixture lands from its fp32 reference: the bound Sorrel's bf16 run of
the same fixture is held to (crates/sorrel-pipeline/tests/modes.rs).

usage:
  python tools/reference/bf16_drift.py tests/fixtures/wan-tiny-i2v

Loads the fixture's pipeline/ folder, puts the transformer and the text encoder in bf16 (the rest stays fp32, as
diffusers' Wan examples do), runs the fixture's image, prompt and noise, and prints the max and mean abs
difference from the fp32 reference of one transformer forward (`unit.transformer.*`), of the latents after every
step and of the frames. One forward is the steady measure: the steps of a tiny random model amplify any rounding
difference.
"""
import json
import os
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

import diffusers.pipelines.wan.pipeline_wan_i2v as i2v_module
from diffusers import WanImageToVideoPipeline
from fixture_util import stub_ftfy

stub_ftfy(i2v_module)


def main(fixture):
    refs = load_file(os.path.join(fixture, "reference.safetensors"))
    with open(os.path.join(fixture, "reference.safetensors"), "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        meta = json.loads(f.read(n))["__metadata__"]
    # torch_dtype at load keeps the modules diffusers marks fp32 (norms, modulation, time embedding) in fp32.
    dtypes = {"transformer": torch.bfloat16, "text_encoder": torch.bfloat16, "default": torch.float32}
    pipe = WanImageToVideoPipeline.from_pretrained(os.path.join(fixture, "pipeline"), torch_dtype=dtypes)
    pipe.set_progress_bar_config(disable=True)
    got = {}

    def on_step(p, i, t, kw):
        got[i] = kw["latents"].detach().float().clone()
        return {}

    image = Image.fromarray(refs["image"].numpy())
    last = Image.fromarray(refs["last_image"].numpy()) if "last_image" in refs else None
    h, w, f = int(meta["height"]), int(meta["width"]), int(meta["num_frames"])
    with torch.no_grad():
        res = pipe(image=image, last_image=last, prompt=meta["prompt"], negative_prompt=meta["negative_prompt"],
                   height=h, width=w, num_frames=f, num_inference_steps=int(meta["steps"]),
                   guidance_scale=float(meta["guidance_scale"]), max_sequence_length=int(meta["max_sequence_length"]),
                   latents=refs["latents_init"].clone(), output_type="np", callback_on_step_end=on_step,
                   callback_on_step_end_tensor_inputs=["latents"])
    with torch.no_grad():
        tr = pipe.transformer
        y = tr(refs["unit.transformer.in"].to(torch.bfloat16), torch.tensor([750]),
               refs["unit.transformer.text"].to(torch.bfloat16),
               encoder_hidden_states_image=refs["clip.hidden_states_penultimate"].to(torch.bfloat16),
               return_dict=False)[0].float()
    d = (y - refs["unit.transformer.out"]).abs()
    print(f"unit.transformer.out (one forward): max abs {d.max().item():.6f}, mean abs {d.mean().item():.6f}")
    for i in sorted(got):
        d = (got[i] - refs[f"step{i}.latents_after"]).abs()
        print(f"step{i}.latents_after: max abs {d.max().item():.6f}, mean abs {d.mean().item():.6f}")
    d = np.abs(np.asarray(res.frames, dtype=np.float32) - refs["frames"].numpy())
    print(f"frames: max abs {d.max():.6f}, mean abs {d.mean():.6f}")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(__file__))
    main(sys.argv[1])
