"""Reference for Sorrel's training loop (crates/sorrel-train): torch.optim.AdamW and an EMA of the weights,
five steps on three small parameters with fixed gradients, saved to tests/fixtures/train/adamw.safetensors.

usage: make_train_fixtures.py OUT_DIR
Keys: param.N.init, grad.N.S (the gradient fed at step S), param.N.S and ema.N.S (after step S).
Settings: lr 1e-2, betas (0.9, 0.99), eps 1e-8, weight_decay 0.1 (decoupled, as AdamW does); EMA decay 0.9.
"""

import os
import sys

import torch
from safetensors.torch import save_file

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
torch.manual_seed(7)
shapes = [(4, 3), (5,), (2, 2, 2)]
params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
opt = torch.optim.AdamW(params, lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
ema = [p.detach().clone() for p in params]
tensors = {f"param.{i}.init": p.detach().clone() for i, p in enumerate(params)}
for step in range(1, 6):
    for i, p in enumerate(params):
        g = torch.randn(p.shape) * (0.1 if step % 2 else 3.0)
        p.grad = g
        tensors[f"grad.{i}.{step}"] = g.clone()
    opt.step()
    with torch.no_grad():
        for i, p in enumerate(params):
            ema[i].mul_(0.9).add_(p, alpha=0.1)
            tensors[f"param.{i}.{step}"] = p.detach().clone()
            tensors[f"ema.{i}.{step}"] = ema[i].clone()
save_file(tensors, os.path.join(out, "adamw.safetensors"), metadata={"torch": torch.__version__})
print("wrote", os.path.join(out, "adamw.safetensors"))
