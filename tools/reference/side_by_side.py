"""Side-by-side benchmark of Sorrel and PyTorch/diffusers on the same files and inputs, in one run.

For each case it makes (or takes) the random full-size weights, saves the inputs and PyTorch's fp32 output once,
then times the reference and Sorrel alternately, each run in its own process under `/usr/bin/time` (wall time
printed by each program for the timed call only, peak RSS of the whole process), checks Sorrel's output against
PyTorch's fp32 one, and prints the `docs/benchmarks.md` rows: medians with every run, GFLOP/s, % of the peak,
peak RSS, the ratio, the agreement and the commands. `--write FILE` appends them to FILE as a dated section.

    python tools/reference/side_by_side.py vae-2-f32 vae-2-bf16 embedded --runs 3 \\
        --sorrel target/release --work /tmp/sbs [--write docs/benchmarks.md]

Cases:
    transformer-1280-f32, transformer-1280-bf16   Wan2.1-1.3B, one forward at 1,280 tokens (latent 5x32x32)
    transformer-32k-f32, transformer-32k-bf16     832x480x81 = 32,760 tokens, the first 2 of the 30 blocks
    vae-2-f32, vae-2-bf16, vae-5-*, vae-480-*     Wan2.1 VAE decode of (1,16,T,h,w): T,h,w = 2,32,32 / 5,32,32 / 2,60,104
    embedded                                      one clip of the embedded model (diffusers' WanPipeline on its folder)

Weights: `--transformer DIR` (a diffusers transformer folder; made by `make_fixtures.py OUT --full-size` if
missing: 5.7 GB), `--vae DIR` (made by `bench_vae_decode.py --make` if missing), `--embedded DIR` (default
`models/sorrel-toyworld`). Sorrel's programs are the release examples `forward_bench`, `vae_decode_bench` and
`generate_bench` (build them first: `cargo build --release -p sorrel-models -p sorrel-pipeline --examples`).
Peaks: 530 GFLOP/s fp32, 1060 bf16 (2-core Zen 5 with AVX512-BF16); `--peak-f32`/`--peak-bf16` for another CPU.
"""
import argparse
import datetime
import os
import re
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def transformer_flops(tokens, layers, dim=1536, ffn=8960, text=512):
    """Multiply-adds x 2 of a Wan2.1-1.3B forward's products: self-attention's projections and scores, the
    cross-attention's (keys and values over the text), the feed-forward."""
    per_block = (8 * tokens * dim * dim + 4 * tokens * tokens * dim + 4 * tokens * dim * dim
                 + 4 * text * dim * dim + 4 * tokens * text * dim + 4 * tokens * dim * ffn)
    return per_block * layers


# About 2.5 TFLOP per 5 frames at 256x256 for the Wan2.1 decoder's convolutions (docs/benchmarks.md), linear in
# frames and pixels.
def vae_flops(frames, height, width):
    return 2.5e12 * frames / 5 * height * width / (256 * 256)


def timed(cmd, env=None):
    """Runs cmd under /usr/bin/time; returns (stdout+stderr, peak RSS in GB)."""
    full = ["/usr/bin/time", "-f", "SBS_RSS_KB %M"] + cmd
    p = subprocess.run(full, capture_output=True, text=True, env={**os.environ, **(env or {})})
    out = p.stdout + p.stderr
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{out}")
    rss = int(re.search(r"SBS_RSS_KB (\d+)", out).group(1)) / 1e6
    return out, rss


def number(pattern, text, what):
    m = re.search(pattern, text)
    if not m:
        sys.exit(f"no {what} in:\n{text}")
    return float(m.group(1))


class Case:
    """One comparison: `reference()` and `sorrel()` each return (seconds, peak RSS GB, output text)."""

    def __init__(self, name, args):
        self.name, self.args = name, args
        self.py = args.python
        kind = name.split("-")
        self.dtype = kind[-1] if kind[-1] in ("f32", "bf16") else "f32"
        self.ref_dtype = "fp32" if self.dtype == "f32" else "bf16"
        work = args.work
        os.makedirs(work, exist_ok=True)
        if kind[0] == "transformer":
            self.kind = "transformer"
            big = kind[1] == "32k"
            self.latent = ["--latent", "21,60,104", "--layers", "2"] if big else []
            self.layers = 2 if big else 30
            self.tokens = 32760 if big else 1280
            self.inputs = os.path.join(work, f"in_{kind[1]}.safetensors")
            self.flops = transformer_flops(self.tokens, self.layers)
            self.label = f"Wan2.1-1.3B forward, {self.tokens:,} tokens" + (", 2 of 30 blocks" if big else "")
        elif kind[0] == "vae":
            self.kind = "vae"
            self.latent = {"2": "1,16,2,32,32", "5": "1,16,5,32,32", "480": "1,16,2,60,104"}[kind[1]]
            t, h, w = (int(v) for v in self.latent.split(",")[2:])
            self.inputs = os.path.join(work, f"vin_{kind[1]}.safetensors")
            self.fp32_out = os.path.join(work, f"vout_{kind[1]}.safetensors")
            self.flops = vae_flops(1 + 4 * (t - 1), 8 * h, 8 * w)
            self.label = f"Wan2.1 VAE decode ({self.latent})"
        elif name == "embedded":
            self.kind = "embedded"
            self.flops = None
            self.inputs = os.path.join(work, "embedded_ref.safetensors")
            self.label = "embedded model, one clip"
        else:
            sys.exit(f"unknown case {name}")

    def example(self, name):
        return os.path.join(self.args.sorrel, "examples", name)

    def setup(self):
        """Weights, inputs and PyTorch's fp32 output, made once."""
        a = self.args
        if self.kind == "transformer":
            if not os.path.isfile(os.path.join(a.transformer, "config.json")):
                print(f"making the random full-size transformer under {a.work} (5.7 GB)", flush=True)
                subprocess.run([self.py, os.path.join(HERE, "make_fixtures.py"), a.work, "--full-size"], check=True)
                a.transformer = os.path.join(a.work, "big", "wan2.1-t2v-1.3b-random", "transformer")
            if not os.path.exists(self.inputs):
                timed([self.py, os.path.join(HERE, "bench_transformer.py"), a.transformer, self.inputs, "fp32"]
                      + self.latent)
        elif self.kind == "vae":
            if not os.path.isfile(os.path.join(a.vae, "config.json")):
                subprocess.run([self.py, os.path.join(HERE, "bench_vae_decode.py"), "--make", a.vae], check=True)
            if not os.path.exists(self.fp32_out):
                timed([self.py, os.path.join(HERE, "bench_vae_decode.py"), a.vae, "--latent", self.latent,
                       "--save", self.inputs, self.fp32_out])

    def reference_cmd(self):
        a, scratch = self.args, os.path.join(self.args.work, "scratch.safetensors")
        if self.kind == "transformer":
            return [self.py, os.path.join(HERE, "bench_transformer.py"), a.transformer, scratch,
                    self.ref_dtype] + self.latent
        if self.kind == "vae":
            return [self.py, os.path.join(HERE, "bench_vae_decode.py"), a.vae, "--latent", self.latent,
                    "--dtype", self.ref_dtype, "--save", scratch, scratch + ".out"]
        return [self.py, os.path.join(HERE, "run_toyworld_model.py"), a.embedded, self.inputs, "1"]

    def sorrel_cmd(self):
        a = self.args
        if self.kind == "transformer":
            return [self.example("forward_bench"), a.transformer, a.transformer, self.inputs, self.dtype, "1"]
        if self.kind == "vae":
            extra = ["bf16"] if self.dtype == "bf16" else []
            return [self.example("vae_decode_bench"), a.vae, self.inputs, self.fp32_out, "1"] + extra
        return [self.example("generate_bench"), a.embedded, "1", self.inputs]

    def sorrel_env(self):
        return {"LAYERS": str(self.layers)} if self.kind == "transformer" else {}

    def reference(self):
        out, rss = timed(self.reference_cmd())
        pattern = {"transformer": r"forward ([\d.]+)s", "vae": r"decode ([\d.]+) s",
                   "embedded": r"median ([\d.]+) s per clip"}[self.kind]
        return number(pattern, out, "time"), rss, out

    def sorrel(self):
        out, rss = timed(self.sorrel_cmd(), self.sorrel_env())
        pattern = {"transformer": r"forward median ([\d.]+)s", "vae": r"decode median ([\d.]+)s",
                   "embedded": r"median ([\d.]+) s per clip"}[self.kind]
        return number(pattern, out, "time"), rss, out

    def agreement(self, out):
        if self.kind == "transformer":
            m = re.search(r"vs PyTorch fp32: ([\d.e+-]+)", out)
            return f"{float(m.group(1)):.1e} (relative) from PyTorch fp32" if m else "n/a"
        if self.kind == "vae":
            m = re.search(r"max abs error vs diffusers: ([\d.e+-]+), PSNR ([\d.]+) dB", out)
            return f"{float(m.group(1)):.1e} max, {float(m.group(2)):.1f} dB from diffusers fp32" if m else "n/a"
        return "frames checked by crates/sorrel-cli/tests/embedded.rs"


def fmt_runs(values, unit):
    return f"{statistics.median(values):.2f}{unit} ({', '.join(f'{v:.2f}' for v in values)})"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cases", nargs="+")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--work", default="/tmp/sorrel-side-by-side")
    ap.add_argument("--sorrel", default=os.path.join(REPO, "target", "release"))
    ap.add_argument("--python", default=sys.executable, help="the Python with torch and diffusers")
    ap.add_argument("--transformer", default=os.path.join(REPO, "tests/fixtures/big/wan2.1-t2v-1.3b-random/transformer"))
    ap.add_argument("--vae", default="/tmp/sorrel-side-by-side/vae")
    ap.add_argument("--embedded", default=os.path.join(REPO, "models", "sorrel-toyworld"))
    ap.add_argument("--peak-f32", type=float, default=530.0)
    ap.add_argument("--peak-bf16", type=float, default=1060.0)
    ap.add_argument("--write", metavar="FILE", help="append the rows to FILE as a dated section")
    args = ap.parse_args()
    cases = [Case(n, args) for n in args.cases]
    for c in cases:
        c.setup()
    lines = [
        "| case | dtype | reference (s) | Sorrel (s) | ratio | Sorrel GFLOP/s (% of peak) | peak RSS ref / Sorrel | Sorrel's output |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in cases:
        ref, ours, out = [], [], ""
        for r in range(args.runs):
            print(f"{c.name}: round {r + 1} of {args.runs}", file=sys.stderr, flush=True)
            ref.append(c.reference()[:2])
            t, rss, out = c.sorrel()
            ours.append((t, rss))
        rt, st = [x[0] for x in ref], [x[0] for x in ours]
        ratio = statistics.median(st) / statistics.median(rt)
        if c.flops:
            peak = args.peak_bf16 if c.dtype == "bf16" else args.peak_f32
            gf = c.flops / statistics.median(st) / 1e9
            rate = f"{gf:.0f} ({100 * gf / peak:.0f} %)"
        else:
            rate = ""
        rss = f"{statistics.median([x[1] for x in ref]):.2f} / {statistics.median([x[1] for x in ours]):.2f} GB"
        lines.append(f"| {c.label} | {c.dtype} | {fmt_runs(rt, '')} | {fmt_runs(st, '')} | **{ratio:.2f}x** | "
                     f"{rate} | {rss} | {c.agreement(out)} |")
    lines.append("")
    lines.append("Commands, per run (reference, then Sorrel):")
    lines.append("")
    lines.append("```sh")
    for c in cases:
        env = " ".join(f"{k}={v}" for k, v in c.sorrel_env().items())
        lines.append(" ".join(c.reference_cmd()))
        lines.append((env + " " if env else "") + " ".join(c.sorrel_cmd()))
    lines.append("```")
    # Paths inside the repository as a reader would type them, from its root.
    text = "\n".join(lines).replace(REPO + os.sep, "").replace(args.python, "python")
    print(text)
    if args.write:
        with open(args.write, "a") as f:
            f.write(f"\n## Side by side: {', '.join(args.cases)} ({datetime.date.today()})\n\n"
                    f"`python tools/reference/side_by_side.py {' '.join(args.cases)} --runs {args.runs}`, "
                    f"medians of {args.runs} alternating runs, each in its own process.\n\n{text}\n")


if __name__ == "__main__":
    main()
